"""A model repository: a directory of exported policy files (`*.onnx`) and a pointer file,
`pointer.toml`, naming the version new sessions run on (current), one that takes a share of
them (canary) and the one a rollback goes back to (previous). `vidt models` writes the
pointer; `vidt serve --model-repo DIR` reads it. Shared by both, torch free: a file is opened
with onnxruntime (`OnnxPolicy`) to read and check its metadata, nothing more.

Servers read the pointer while `vidt models` writes it: the pointer is replaced atomically
(temp file, fsync, rename), so a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import math
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from vidt.errors import ConfigError, ModelFileError, VidtError
from vidt.files import atomic_write, atomic_write_text
from vidt.policy_file import OnnxPolicy, PolicyMetadata

POINTER_NAME = "pointer.toml"
POINTER_KEYS = ("current", "canary", "canary_fraction", "previous")
# A version names a file (`add` copies to <version>.onnx) and is written into the pointer.
_VERSION = re.compile(r"[A-Za-z0-9._-]+")

_HEADER = """\
# Which model versions `vidt serve --model-repo` serves from this directory. `vidt models`
# (promote, canary, rollback) writes this file; it may also be edited by hand. Running servers
# reread it on SIGHUP and every few seconds; open sessions stay on the version they began on.
#   current          the version new sessions run on
#   canary           a version run beside it, for a share of new sessions:
#   canary_fraction  that share, in (0, 1]
#   previous         the version `vidt models rollback` makes current again
# Each version is a model version (`vidt models list`) or a file name in this directory;
# a key left out means none.
"""


@dataclass(frozen=True)
class ModelEntry:
    """A valid policy file: what a server needs to know of it before loading it."""

    version: str  # the file's model_version (its content hash, from its metadata)
    path: Path
    model_name: str
    env_id: str
    obs_dim: int
    act_dim: int
    context_len: int
    size: int  # bytes
    # Compared by `compatible`: a canary acting out of the current version's bounds is
    # another policy for the robot, not a new version of the same one.
    action_low: tuple[float, ...] = ()
    action_high: tuple[float, ...] = ()


@dataclass(frozen=True)
class Pointer:
    current: str | None = None  # versions, always resolved (never file names)
    canary: str | None = None
    canary_fraction: float = 0.0  # in [0, 1]; 0 when canary is None
    previous: str | None = None  # where rollback goes

    def __post_init__(self):
        f = self.canary_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) \
                or not 0 <= f <= 1:
            raise ConfigError(f"canary_fraction must be a number in [0, 1], got {f!r}")
        object.__setattr__(self, "canary_fraction", float(f))
        if self.canary is None and f > 0:
            raise ConfigError(f"canary_fraction = {f:g} without a canary version")
        if self.canary is not None and f == 0:
            # A canary nobody is sent to is a mistake to point out, not a state to keep.
            raise ConfigError(f"canary {self.canary} has canary_fraction 0: give a fraction "
                              "in (0, 1], or remove the canary")
        if self.canary is not None and self.current is None:
            raise ConfigError(f"canary {self.canary} without a current version")

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in POINTER_KEYS}


def compatible(a: ModelEntry | PolicyMetadata, b: ModelEntry | PolicyMetadata) -> str | None:
    """None if two versions can serve side by side (same env_id, obs_dim, act_dim; action bounds
    equal when both have them), else one line saying what differs."""
    diffs = [f"{k} {getattr(a, k)!r} vs {getattr(b, k)!r}"
             for k in ("env_id", "obs_dim", "act_dim") if getattr(a, k) != getattr(b, k)]
    if a.action_low and b.action_low and (a.action_low, a.action_high) != (b.action_low,
                                                                           b.action_high):
        diffs.append(f"action bounds {list(a.action_low)}..{list(a.action_high)} vs "
                     f"{list(b.action_low)}..{list(b.action_high)}")
    return "; ".join(diffs) or None


def _open(path: Path) -> ModelEntry | str:
    """The entry of the policy file at `path`, or one line saying why it is not one."""
    try:
        size = path.stat().st_size
        m = OnnxPolicy(path, provider="cpu", intra_op_threads=1).metadata
    except (VidtError, OSError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        why = why.removeprefix(f"{path}: ")  # the caller names the file
        return " ".join(why.split())
    if not _VERSION.fullmatch(m.model_version):
        return f"model_version {m.model_version!r} is not a version (letters, digits, . _ -)"
    return ModelEntry(m.model_version, path, m.model_name, m.env_id, m.obs_dim, m.act_dim,
                      m.context_len, size, m.action_low, m.action_high)


class ModelRepository:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError(f"{self.root}: not a directory (a model repository is a "
                              "directory of .onnx files)")
        self.pointer_path = self.root / POINTER_NAME
        # file name -> ((size, mtime_ns, inode), entry or why not): a rescan of an unchanged
        # directory opens nothing. The inode catches a file replaced by rename.
        self._files: dict[str, tuple[tuple[int, int, int], ModelEntry | str]] = {}
        self._lock = threading.Lock()  # a server may scan from its reload thread and a handler

    # ---- the files ---------------------------------------------------------------------------
    def _scan_files(self) -> dict[str, ModelEntry | str]:
        with self._lock:
            files = {}
            for path in sorted(self.root.glob("*.onnx")):
                try:
                    st = path.stat()
                    key = (st.st_size, st.st_mtime_ns, st.st_ino)
                except OSError as e:  # a dangling link, or removed since the listing
                    files[path.name] = ((-1, -1, -1), e.strerror or str(e))
                    continue
                cached = self._files.get(path.name)
                files[path.name] = cached if cached and cached[0] == key else (key, _open(path))
            self._files = files
            return {name: found for name, (_, found) in files.items()}

    def scan(self) -> tuple[dict[str, ModelEntry], dict[Path, str]]:
        """Every *.onnx directly in root: valid ones by version, invalid ones path -> reason.
        Two files of one version hold the same content: either one serves."""
        valid, invalid = {}, {}
        for name, found in self._scan_files().items():
            if isinstance(found, ModelEntry):
                valid.setdefault(found.version, found)
            else:
                invalid[self.root / name] = found
        return valid, invalid

    def entry(self, version: str) -> ModelEntry | None:
        return self.scan()[0].get(version)

    def _file(self, path: Path) -> ModelEntry:
        if path.parent.resolve() == self.root.resolve() and path.suffix == ".onnx":
            found = self._scan_files().get(path.name, "no such file")
        else:
            found = _open(path) if path.exists() else "no such file"
        if isinstance(found, str):
            raise ModelFileError(f"{path}: {found}")
        return found

    def resolve(self, ref: str | Path) -> ModelEntry:
        """`ref` is a version, a file name in root, or a path to a file anywhere. A bare name
        is looked up in root first; ./NAME is the file in the working directory."""
        ref = str(ref)
        if not ref:
            raise ModelFileError("an empty file name or model version")
        valid, _ = self.scan()
        if ref in valid:
            return valid[ref]
        here = Path(ref)
        if here.name == ref and (self.root / ref).exists():
            e = self._file(self.root / ref)
            other = _open(here) if here.is_file() and not here.samefile(e.path) else e
            if not isinstance(other, ModelEntry) or other.version != e.version:
                raise ModelFileError(f"{ref} names a file here and another in {self.root}: "
                                     f"write ./{ref} for this one, or its version")
            return e
        if here.exists():
            return self._file(here)
        raise ModelFileError(f"{ref}: no such file, and no model version {ref} in {self.root}")

    def add(self, path: str | Path) -> ModelEntry:
        """The file at `path` as a file of root: copied in as <version>.onnx (atomically: a
        server scanning meanwhile sees no half file) unless root holds its version already."""
        return self._add(self._file(Path(path)))

    def _add(self, e: ModelEntry) -> ModelEntry:
        held = self.entry(e.version)
        if held is not None:
            return held
        dest = self.root / f"{e.version}.onnx"
        with open(e.path, "rb") as src:
            atomic_write(dest, lambda f: shutil.copyfileobj(src, f))
        copied = self._scan_files().get(dest.name)
        if not isinstance(copied, ModelEntry) or copied.version != e.version:
            dest.unlink(missing_ok=True)  # the source changed between its check and the copy
            raise ModelFileError(f"{e.path}: changed while it was copied into {self.root}")
        return copied

    # ---- the pointer -------------------------------------------------------------------------
    def read_pointer(self) -> Pointer:
        """The pointer with every version resolved; Pointer() when there is no pointer file."""
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            raise ConfigError(f"{self.pointer_path}: reading it needs Python 3.11+ "
                              "(tomllib)") from None
        where = self.pointer_path
        try:
            data = tomllib.loads(where.read_text())
        except FileNotFoundError:
            return Pointer()
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{where}: not valid TOML: {e}") from None
        unknown = sorted(set(data) - set(POINTER_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (keys: "
                              f"{', '.join(POINTER_KEYS)})")
        entries = {}
        for key in ("current", "canary", "previous"):
            ref = data.get(key, "")
            if not isinstance(ref, str):
                raise ConfigError(f"{where}: {key} must be a string (a version or a file "
                                  f"name), got {ref!r}")
            entries[key] = self._pointer_ref(key, ref) if ref else None
        try:
            p = Pointer(**{k: e and e.version for k, e in entries.items()},
                        canary_fraction=data.get("canary_fraction", 0.0))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        if p.canary is not None:  # a hand edit skips `vidt models canary`'s check
            _refuse_incompatible(entries["canary"], entries["current"], f"{where}: canary")
        return p

    def _pointer_ref(self, key: str, ref: str) -> ModelEntry:
        # Only names in root: the pointer means the same whatever the reader's working directory.
        where = f"{self.pointer_path}: {key} = {ref!r}"
        valid, _ = self.scan()
        if ref in valid:
            return valid[ref]
        found = self._scan_files().get(ref) if Path(ref).name == ref else None
        if found is None:
            raise ModelFileError(f"{where}: no model version or .onnx file of that name in "
                                 f"{self.root}")
        if isinstance(found, str):
            raise ModelFileError(f"{where}: {found}")
        return found

    def write_pointer(self, p: Pointer) -> None:
        lines = [_HEADER]
        for key in POINTER_KEYS:
            value = getattr(p, key)
            if key == "canary_fraction":
                if p.canary is not None:
                    lines.append(f"{key} = {value!r}\n")
            elif value is not None:
                if not _VERSION.fullmatch(value):  # so that it needs no TOML escapes
                    raise ConfigError(f"{key} = {value!r} is not a model version")
                lines.append(f'{key} = "{value}"\n')
        atomic_write_text("".join(lines), self.pointer_path)

    # ---- changes -----------------------------------------------------------------------------
    def _incoming(self, ref: str | Path, current: str | None) -> ModelEntry:
        """`ref` checked against the current version, then copied into root if outside."""
        e = self.resolve(ref)
        _refuse_incompatible(e, current and self.entry(current), e.path.name)
        return self._add(e)

    def promote(self, ref: str | Path) -> Pointer:
        """Make `ref` current; the old current becomes previous; a canary of `ref` ends."""
        old = self.read_pointer()
        e = self._incoming(ref, old.current)
        if e.version == old.current:
            return old
        canary = None if old.canary == e.version else old.canary
        p = Pointer(current=e.version, canary=canary,
                    canary_fraction=old.canary_fraction if canary else 0.0,
                    previous=old.current)
        self.write_pointer(p)
        return p

    def set_canary(self, ref: str | Path | None, fraction: float) -> Pointer:
        """Send `fraction` of new sessions to `ref`; fraction 0 ends the canary (no ref then)."""
        if isinstance(fraction, bool) or not (math.isfinite(fraction) and 0 <= fraction <= 1):
            raise ConfigError(f"canary fraction must be in [0, 1], got {fraction!r}")
        old = self.read_pointer()
        if fraction == 0:
            p = Pointer(current=old.current, previous=old.previous)
        else:
            if ref is None:
                raise ConfigError("a canary needs a file or a model version")
            if old.current is None:
                raise ConfigError(f"{self.pointer_path}: no current version for a canary to "
                                  "run beside: promote one first")
            e = self._incoming(ref, old.current)
            if e.version == old.current:
                raise ConfigError(f"{e.version} is the current version already")
            p = Pointer(current=old.current, canary=e.version, canary_fraction=fraction,
                        previous=old.previous)
        if p != old:
            self.write_pointer(p)
        return p

    def rollback(self) -> Pointer:
        """Swap current and previous (a second rollback undoes the first)."""
        old = self.read_pointer()
        if old.previous is None:
            raise ConfigError(f"{self.pointer_path}: no previous version to roll back to")
        canary = None if old.canary == old.previous else old.canary
        if canary is not None:  # fine unless the pointer was edited by hand
            _refuse_incompatible(self.entry(canary), self.entry(old.previous),
                                 f"rollback: canary {canary}",
                                 hint="; end the canary first (vidt models canary DIR "
                                      "--fraction 0)")
        p = Pointer(current=old.previous, canary=canary,
                    canary_fraction=old.canary_fraction if canary else 0.0,
                    previous=old.current)
        self.write_pointer(p)
        return p


def _refuse_incompatible(new: ModelEntry, current: ModelEntry | None, what: str,
                         hint: str = "") -> None:
    why = compatible(new, current) if current is not None else None
    if why:
        raise ModelFileError(f"{what} ({new.version}) cannot serve beside current version "
                             f"{current.version}: {why}{hint}")
