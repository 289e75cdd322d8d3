"""Files written atomically: a temp file beside the target, fsynced, renamed over it. The
file is the old one or the new one, never half of either, whatever kills the process. And
who holds a run directory (the trainer's lock). Torch free, so the sweep driver and `vidt
report` use it without loading torch."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from vidt.errors import StorageError

LOCK_FILE = ".vidt-train.lock"  # a trainer's flock on its run directory (train.checkpoint)


def fsync_dir(path: Path) -> None:
    """Make a rename durable: without this a power loss can bring back the old directory
    entry (or none). Best effort: not every platform or filesystem allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write) -> None:
    """Call write(binary_file) on a temp file beside `path`, then rename it over `path`: the
    file is the old one or the new one, never half of either, whatever kills the process.
    An OSError becomes a StorageError naming `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # os.open with 0o666 (not mkstemp's 0600): the file gets the user's umask, like open()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise StorageError(f"could not write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):  # disk full, read-only, permissions: say which file
            raise StorageError(f"could not write {path}: {e.strerror or e}") from e
        raise
    fsync_dir(path.parent)


def atomic_write_text(text: str, path: str | Path) -> None:
    atomic_write_bytes(text.encode(), path)


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    atomic_write(path, lambda f: f.write(data))


def training_pid(run_dir: str | Path) -> str | None:
    """The pid of the `vidt train` holding RUN_DIR's lock, or None when no trainer runs there
    (the lock is taken and given back at once, so this never blocks a trainer)."""
    path = Path(run_dir) / LOCK_FILE
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)  # also drops the shared lock, if it was taken
    return None
