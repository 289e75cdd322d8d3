"""The policy runner the server uses: `OnnxPolicy` and the file's `PolicyMetadata`, which
live in `vidt.policy_file` (the exported file's format and its torch-free runner, shared with
the exporter and collection). Kept as the serving package's name for them."""

from __future__ import annotations

from vidt.policy_file import FORMAT_VERSION, OnnxPolicy, PolicyMetadata

__all__ = ["FORMAT_VERSION", "OnnxPolicy", "PolicyMetadata"]
