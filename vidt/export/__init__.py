"""Actor -> one self-describing ONNX file, checked against PyTorch (see export.py)."""

from .export import (
    DEFAULT_OPSET,
    PARITY_TOL,
    ExportReport,
    build_metadata,
    export,
    export_actor,
    parity,
    random_windows,
    rollout_windows,
)

__all__ = ["DEFAULT_OPSET", "PARITY_TOL", "ExportReport", "build_metadata", "export",
           "export_actor", "parity", "random_windows", "rollout_windows"]
