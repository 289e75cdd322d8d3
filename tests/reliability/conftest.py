"""Fixtures of the reliability tests: the tiny contract-conforming ONNX actor in the real
onnxruntime, and the count of fuzz cases per category (printed at the end of the run)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from reliability_util import EVAL_LEN, A, K, S
from serving_util import make_dt_onnx, make_policy_onnx

FUZZ_COUNTS: Counter = Counter()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_policy_onnx(tmp_path_factory.mktemp("reliability") / "tiny.onnx", obs_dim=S,
                            act_dim=A, K=K, eval_len=EVAL_LEN, default_target_return=10.0)


@pytest.fixture(scope="session")
def dt_model(tmp_path_factory) -> Path:
    """A Decision Transformer exported by vidt's exporter, with the tiny model's sizes."""
    return make_dt_onnx(tmp_path_factory.mktemp("reliability") / "dt.onnx", obs_dim=S,
                        act_dim=A, K=K, eval_len=EVAL_LEN, default_target_return=10.0)


@pytest.fixture(scope="session")
def policy(tiny_model):
    from vidt.serving.runtime import OnnxPolicy

    return OnnxPolicy(tiny_model, provider="cpu", intra_op_threads=1)


@pytest.fixture(scope="session")
def fuzz_counts() -> Counter:
    return FUZZ_COUNTS


def pytest_terminal_summary(terminalreporter):
    if FUZZ_COUNTS:
        total = sum(FUZZ_COUNTS.values())
        terminalreporter.write_line(f"reliability cases tried, by category: {total}")
        for name, n in sorted(FUZZ_COUNTS.items()):
            terminalreporter.write_line(f"  {name}: {n}")

