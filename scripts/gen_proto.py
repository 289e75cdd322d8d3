"""Regenerate the gRPC Python code from proto/vidt/v1/policy.proto (run by `make proto`).

The output lands in vidt/v1/ because protoc mirrors the proto package under `-I proto`, so the
generated imports (`from vidt.v1 import policy_pb2`) resolve inside the installed package.
The generated files are committed; tests/test_proto.py fails when they are stale.

    python scripts/gen_proto.py            # write vidt/v1/policy_pb2*.py(i)
    python scripts/gen_proto.py --out DIR  # write under DIR instead (the staleness test)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
PROTOS = ["vidt/v1/policy.proto"]
GENERATED = ["vidt/v1/policy_pb2.py", "vidt/v1/policy_pb2.pyi", "vidt/v1/policy_pb2_grpc.py"]


def generate(out: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) into `out`; returns the files written."""
    try:
        from grpc_tools import protoc
    except ImportError as e:  # a dev dependency only
        raise SystemExit("grpcio-tools is missing: pip install -e '.[dev]'") from e
    import grpc_tools

    out.mkdir(parents=True, exist_ok=True)
    # protoc's bundled well-known types (none used today, but imports of them must resolve).
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{wkt}", f"--python_out={out}",
            f"--pyi_out={out}", f"--grpc_python_out={out}", *PROTOS]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed: {' '.join(args)}")
    return [out / g for g in GENERATED]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repo)")
    files = generate(ap.parse_args().out)
    for f in files:
        print(f.relative_to(ROOT) if f.is_relative_to(ROOT) else f, file=sys.stderr)


if __name__ == "__main__":
    main()
