"""The request fuzzer of test_serve_fuzz_core.py over the real gRPC server on a loopback port (one
server for the module): the same oracle, plus what only the transport adds (float32 on the
wire, message size limits, status codes in trailers, the stream form). After every case health
is SERVING for both names and an untouched canary session acts as a local replay says."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reliability_util import (
    IDLE_S,
    Clock,
    GrpcTarget,
    Harness,
    fuzz,
    requests,
    target_returns,
)
from serving_util import running_server

from vidt.serving.server import message_limits


@pytest.fixture(scope="module")
def server(policy):
    with running_server(policy, idle_timeout_s=IDLE_S, max_sessions=64) as srv:
        yield srv


@pytest.fixture(scope="module")
def harness(server, policy, fuzz_counts):
    clock = Clock()
    server.store.clock = clock  # expiry without sleeping; the sweeper reads the same clock
    target = GrpcTarget(server.address, message_limits(3, 2, 1024)[0])
    code, expired = target.create()
    assert code == "OK"
    clock.t += IDLE_S + 1
    assert server.store.expire_idle() == 1
    yield Harness(target, policy, expired, fuzz_counts)
    target.channel.close()
    assert server.store.active == 0  # every case closed what it opened: nothing leaked


ks = st.lists(st.integers(0, 4), min_size=3, max_size=3)


@fuzz(400)
@given(ks=ks, r=requests(3))
def test_act_fuzz_over_grpc(harness, ks, r):
    with harness.case(ks) as world:
        harness.act(world, r)


@fuzz(200)
@given(ks=ks, reqs=st.lists(requests(3), max_size=4),
       dup=st.one_of(st.none(), st.integers(0, 3)))
def test_act_batch_fuzz_over_grpc(harness, ks, reqs, dup):
    with harness.case(ks) as world:
        harness.batch(world, reqs, dup)


@fuzz(100)
@given(ks=ks, r=requests(3))
def test_act_stream_fuzz_over_grpc(harness, ks, r):
    with harness.case(ks) as world:
        harness.stream(world, r)


@fuzz(80)
@given(target=target_returns)
def test_create_session_fuzz_over_grpc(harness, target):
    harness.create(target)


def test_act_batch_over_the_request_limit(server, harness, fuzz_counts):
    """1,025 requests (small enough for the byte limit) exceed ActBatch's 1,024: refused
    before any session is looked at, and the server goes on."""
    fuzz_counts["batch over the request limit"] += 1
    code, msg = harness.t.act_batch([(f"id{i}", 0, [0.0] * 3, 0.0) for i in range(1025)])
    assert code == "INVALID_ARGUMENT" and "at most 1024" in msg, (code, msg)
    with harness.case([1, 0, 0]):
        pass  # the canary and the victims still step as their replays say
