"""The generated gRPC code is committed: it must be what `make proto` would write now."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) regenerates the code")


def _gen_proto():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_code_is_fresh(tmp_path):
    gen = _gen_proto()
    fresh = gen.generate(tmp_path)
    assert len(fresh) == 3
    for rel, new in zip(gen.GENERATED, fresh):
        committed = ROOT / rel
        assert committed.exists(), f"{rel} is missing: run `make proto`"
        assert committed.read_bytes() == new.read_bytes(), (
            f"{rel} is stale against proto/vidt/v1/policy.proto: run `make proto`")


def test_generated_code_imports_under_vidt():
    from vidt.v1 import policy_pb2, policy_pb2_grpc

    service = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"]
    assert service.full_name == "vidt.v1.PolicyService"
    assert [m.name for m in service.methods] == [
        "GetPolicyInfo", "CreateSession", "Act", "ActBatch", "ActStream", "CloseSession"]
    assert hasattr(policy_pb2_grpc, "PolicyServiceStub")
    # The contract's field numbers (proto/vidt/v1/policy.proto) must never move.
    act = policy_pb2.ActRequest.DESCRIPTOR.fields_by_name
    assert {n: f.number for n, f in act.items()} == {
        "session_id": 1, "step": 2, "observation": 3, "reward": 4}
    assert policy_pb2.CreateSessionRequest.DESCRIPTOR.fields_by_name[
        "target_return"].has_presence
    assert "vidt.v1.policy_pb2" in sys.modules
