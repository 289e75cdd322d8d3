"""Errors a user can fix. The CLI prints their message (no traceback) and exits non-zero."""


class VidtError(Exception):
    """Base class: a problem with the user's input (file, flag, config), not a bug."""

    exit_code = 1


class DatasetError(VidtError):
    """A dataset cannot be read or does not fit: the message names the file and the problem."""


class ConfigError(VidtError):
    """An invalid configuration value, key, preset or flag combination."""


class ModelFileError(VidtError):
    """An ONNX file or checkpoint that is corrupt, truncated, foreign or mismatched."""


class StorageError(VidtError):
    """A file of ours cannot be written or a run directory used: disk full, read-only or
    unwritable location, or a run directory held by another process."""
