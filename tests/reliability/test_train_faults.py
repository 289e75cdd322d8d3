"""The trainer under faults: SIGKILL in the middle of a checkpoint write, a full disk, a
read-only or impossible run directory, and two trainers on one run directory. Real `vidt
train` processes; the faults are real kernel errors (a file-size limit, a full or read-only
tmpfs where the machine lets us mount one)."""

from __future__ import annotations

import csv
import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BASE = ["train", "--env", "Pendulum-v1", "--preset", "tiny", "--algo", "vidt", "--seed", "5",
        "--pretrain-updates", "20", "--device", "cpu", "--no-progress",
        "--set", "threads=1", "--set", "online.updates_per_iter=10"]


def vidt(*args) -> list[str]:
    return [sys.executable, "-m", "vidt.cli.main", *args]


def run(*args, limit_bytes: int | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    def preexec():  # a per-file size limit: writes past it fail with EFBIG, like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run(vidt(*args), capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec if limit_bytes else None,
                          env={**os.environ, "PYTHONHASHSEED": "0"})


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        out = list(csv.DictReader(f))
    for r in out:
        r.pop("wall_time_s")  # the only column allowed to differ between runs
    return out


def temps(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name.endswith(".tmp"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 1, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, res.stderr[-2000:]
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """100k random Pendulum steps: a checkpoint of several MB (the replay buffer holds them),
    so a write lasts long enough to be caught in the middle."""
    out = tmp_path_factory.mktemp("faults") / "pendulum"
    res = run("collect", "--env", "Pendulum-v1", "--steps", "100000", "--seed", "0", "--out", str(out))
    assert res.returncode == 0, res.stderr
    return out


@pytest.mark.timeout(600)
def test_sigkill_during_checkpoint_write_then_resume(tmp_path, dataset):
    args = [*BASE, "--dataset", str(dataset), "--online-steps", "2400"]
    ref = run(*args, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr

    killed = tmp_path / "killed"
    caught = 0
    for attempt in range(8):
        proc = subprocess.Popen(vidt(*args, "--out", str(killed), *(["--resume"] if attempt else [])),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONHASHSEED": "0"})
        try:
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                # Kill the moment a checkpoint write starts, once a previous checkpoint exists.
                if killed.exists() and (killed / "checkpoint.pt").exists() and any(
                        n.startswith(".checkpoint.pt.") for n in temps(killed)):
                    os.kill(proc.pid, signal.SIGKILL)
                    break
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
        if proc.returncode == 0:
            break  # finished before a write could be caught
        partial = [n for n in temps(killed) if n.startswith(".checkpoint.pt.")]
        if partial:  # killed mid-write: the partial file is there, the old checkpoint whole
            caught += 1
            from vidt.train.checkpoint import load_file

            assert load_file(killed / "checkpoint.pt")["format_version"] == 1
        if caught >= 2:
            break
    assert caught >= 1, "no SIGKILL landed during a checkpoint write; make checkpoints larger"
    print(f"SIGKILL landed mid-write {caught} time(s) in {attempt + 1} attempt(s)")

    res = run(*args, "--out", str(killed), "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert temps(killed) == []  # the partial files were cleaned up
    assert rows(killed) == rows(tmp_path / "ref")  # and the run ends as if never killed


@pytest.mark.timeout(300)
def test_full_disk_at_a_checkpoint_is_a_clear_error_and_resume_continues(tmp_path, dataset):
    args = [*BASE, "--dataset", str(dataset)]
    for name in ("ref", "run"):  # the reference takes the same two legs, without the fault
        first = run(*args, "--online-steps", "600", "--out", str(tmp_path / name))
        assert first.returncode == 0, first.stderr
    ref = run(*args, "--online-steps", "1600", "--out", str(tmp_path / "ref"), "--resume")
    assert ref.returncode == 0, ref.stderr
    run_dir = tmp_path / "run"
    ckpt, actor = sha(run_dir / "checkpoint.pt"), sha(run_dir / "actor.pt")
    assert (run_dir / "checkpoint.pt").stat().st_size > 1_000_000 > 300_000 > max(
        (run_dir / n).stat().st_size for n in ("actor.pt", "metrics.csv", "learning_curve.png"))

    # Room for the small files, not for the checkpoint.
    full = run(*args, "--online-steps", "1600", "--out", str(run_dir), "--resume",
               limit_bytes=300_000)
    one_line_error(full, "could not write", "checkpoint.pt", "File too large",
                   "previous checkpoint.pt is intact", "--resume")
    assert sha(run_dir / "checkpoint.pt") == ckpt and sha(run_dir / "actor.pt") == actor
    assert temps(run_dir) == []  # nothing half-written left behind

    again = run(*args, "--online-steps", "1600", "--out", str(run_dir), "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert rows(run_dir) == rows(tmp_path / "ref")


def test_run_dir_that_cannot_exist_is_a_clear_error(tmp_path, dataset):
    (tmp_path / "a_file").write_text("not a directory")
    res = run(*BASE, "--dataset", str(dataset), "--online-steps", "200",
              "--out", str(tmp_path / "a_file" / "run"))
    one_line_error(res, "cannot use", "a_file/run", "Not a directory")


def test_unwritable_run_dir_is_a_clear_error(tmp_path, dataset):
    if os.geteuid() == 0:
        pytest.skip("root writes through permission bits; the read-only tmpfs test covers root")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(0o555)
    try:
        res = run(*BASE, "--dataset", str(dataset), "--online-steps", "200", "--out", str(run_dir))
        one_line_error(res, "cannot use", "Permission denied")
    finally:
        run_dir.chmod(0o755)


def test_a_second_trainer_on_the_same_run_dir_is_refused(tmp_path, dataset):
    run_dir = tmp_path / "run"
    args = [*BASE, "--dataset", str(dataset), "--online-steps", "100000", "--out", str(run_dir)]
    proc = subprocess.Popen(vidt(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "config.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None
        second = run(*args, "--resume")
        one_line_error(second, "in use by another vidt train", f"pid {proc.pid}")
        forced = run(*args, "--force")  # --force must not delete a live run's files either
        one_line_error(forced, "in use by another vidt train")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    # The kernel dropped the dead trainer's lock: the run resumes (budget cut to finish now).
    res = run(*args[:-4], "--online-steps", "1", "--out", str(run_dir), "--resume")
    assert res.returncode == 0, res.stderr[-2000:]


# ---- a real full and a real read-only filesystem, where the machine lets us mount tmpfs -----------

@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()[:80]})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_full_disk_and_read_only_filesystem(tmpfs, dataset):
    args = [*BASE, "--dataset", str(dataset)]
    run_dir = tmpfs / "run"
    first = run(*args, "--online-steps", "600", "--out", str(run_dir))
    assert first.returncode == 0, first.stderr
    ckpt = sha(run_dir / "checkpoint.pt")
    # Fill the filesystem to the last few KB.
    with open(tmpfs / "filler", "wb", buffering=0) as f:
        for block in (1 << 20, 4096):
            try:
                while True:
                    f.write(b"\0" * block)
            except OSError:
                pass
    full = run(*args, "--online-steps", "1600", "--out", str(run_dir), "--resume")
    one_line_error(full, "could not write", str(run_dir), "No space left on device")
    assert sha(run_dir / "checkpoint.pt") == ckpt and temps(run_dir) == []
    (tmpfs / "filler").unlink()

    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    ro = run(*args, "--online-steps", "1600", "--out", str(run_dir), "--resume")
    one_line_error(ro, "cannot use", "Read-only file system")
    subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    done = run(*args, "--online-steps", "1600", "--out", str(run_dir), "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
