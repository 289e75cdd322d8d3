"""Serving side of vidt: onnxruntime policy, sessions, gRPC. Never imports torch.

Names are resolved lazily so that `import vidt.serving` stays cheap (no onnxruntime or grpc
until something is used).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "OnnxPolicy": "vidt.policy_file",
    "PolicyMetadata": "vidt.policy_file",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vidt.serving' has no attribute {name!r}")
