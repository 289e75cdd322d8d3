"""Property-based tests of the session core (SessionStore over the Batcher and the real
onnxruntime session), no network: every request field fuzzed, every answer checked against
the contract (proto/vidt/v1/policy.proto), and after every case the sessions the request named
and an untouched canary session still act exactly as a local replay of their episodes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reliability_util import IDLE_S, Clock, CoreTarget, Harness, fuzz, requests, target_returns

from vidt.serving.batcher import Batcher
from vidt.serving.sessions import SessionStore


@pytest.fixture(scope="module")
def harness(policy, fuzz_counts):
    clock = Clock()
    store = SessionStore(policy.metadata, Batcher(policy.predict, max_batch=64),
                         max_sessions=64, idle_timeout_s=IDLE_S, clock=clock)
    expired = store.create().session_id
    clock.t += IDLE_S + 1
    assert store.expire_idle() == 1
    h = Harness(CoreTarget(store), policy, expired, fuzz_counts)
    yield h
    assert store.active == 0  # every case closed what it opened: nothing leaked


ks = st.lists(st.integers(0, 4), min_size=3, max_size=3)


@fuzz(700)
@given(ks=ks, r=requests(3))
def test_act_fuzz(harness, ks, r):
    with harness.case(ks) as world:
        harness.act(world, r)


@fuzz(400)
@given(ks=ks, reqs=st.lists(requests(3), max_size=4),
       dup=st.one_of(st.none(), st.integers(0, 3)))
def test_act_batch_fuzz(harness, ks, reqs, dup):
    with harness.case(ks) as world:
        harness.batch(world, reqs, dup)


@fuzz(150)
@given(target=target_returns)
def test_create_session_fuzz(harness, target):
    harness.create(target)
