"""kill -9 in the middle of a run, --resume, and the run ends exactly as if never interrupted."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

ARGS = ["train", "--env", "vidt/OneState-v0", "--preset", "tiny", "--algo", "vidt",
        "--seed", "3", "--pretrain-updates", "60", "--online-steps", "384", "--device", "cpu",
        "--no-progress", "--json"]


def _vidt(*args):
    return [sys.executable, "-m", "vidt.cli.main", *args]


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.pop("wall_time_s")  # the only column allowed to differ
    return rows


def test_kill_9_and_resume_equals_uninterrupted(tmp_path, run_cli):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    r = run_cli(*ARGS, "--out", str(full))  # in-process: the reference run
    assert r.exit_code == 0, r.stderr

    proc = subprocess.Popen(_vidt(*ARGS, "--out", str(killed)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (killed / "metrics.csv").exists() and len(_rows(killed)) >= 3:
                break
            time.sleep(0.05)
        if proc.poll() is not None:
            pytest.fail("the run finished before it could be killed; make it longer")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = _rows(killed)
    assert 3 <= len(partial) < len(_rows(full))

    out = subprocess.run(_vidt(*ARGS, "--out", str(killed), "--resume"), env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert _rows(killed) == _rows(full)


def test_a_run_that_differs_only_online_starts_from_another_s_pretraining(tmp_path, run_cli):
    # vidt-anchor differs from vidt in its algorithm and online coefficients only: started from
    # vidt's pretrained.pt it must end exactly as when it pretrains itself.
    vidt_run, own, taken = tmp_path / "vidt", tmp_path / "own", tmp_path / "taken"
    anchor = [*ARGS[:ARGS.index("--algo")], "--algo", "vidt-anchor", *ARGS[ARGS.index("--seed"):]]
    assert run_cli(*ARGS, "--out", str(vidt_run)).exit_code == 0
    assert (vidt_run / "pretrained.pt").is_file()
    assert run_cli(*anchor, "--out", str(own)).exit_code == 0
    r = run_cli(*anchor, "--out", str(taken), "--pretrained-from", str(vidt_run))
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["pretrained_from"] == str(vidt_run / "pretrained.pt")
    assert _rows(taken) == _rows(own)
    assert _rows(taken) != _rows(vidt_run)  # the anchor acts online

    # One that would pretrain otherwise is refused in one line, before its directory exists.
    odt = [*ARGS[:ARGS.index("--algo")], "--algo", "odt", *ARGS[ARGS.index("--seed"):]]
    r = run_cli(*odt, "--out", str(tmp_path / "odt"), "--pretrained-from", str(vidt_run))
    assert r.exit_code == 1 and "pretrained with other settings: algo: 'vidt' vs 'odt'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "odt").exists()
    r = run_cli(*anchor, "--set", "loss.gamma=0.9", "--out", str(tmp_path / "g"),
                "--pretrained-from", str(vidt_run))
    assert r.exit_code == 1 and "loss.gamma: 0.99 vs 0.9" in r.stderr
    r = run_cli(*anchor, "--out", str(tmp_path / "n"), "--pretrained-from", str(tmp_path))
    assert r.exit_code == 1 and "no pretrained.pt" in r.stderr
    # With the RL term on from the start, the online coefficients are read while pretraining.
    r = run_cli(*anchor, "--set", "loss.rl_from_start=true", "--out", str(tmp_path / "f"),
                "--pretrained-from", str(vidt_run))
    assert r.exit_code == 1 and "loss.rl_from_start: False vs True" in r.stderr
    assert "loss.anchor_coef: 0.0 vs 1.0" in r.stderr


def test_a_run_stopped_after_its_last_collection_still_does_its_last_updates(tmp_path, run_cli):
    # Stopped (Ctrl-C) in the last iteration, after the episodes that spend the budget were
    # collected: the resume must do that iteration's updates and the final evaluation, not
    # call the run finished.
    from vidt.train.config import TrainConfig
    from vidt.train.trainer import Trainer

    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run_cli(*ARGS, "--out", str(full)).exit_code == 0
    cfg = TrainConfig.from_dict(json.loads((full / "config.json").read_text()))
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # as train() does; other thread counts round differently
    t = Trainer(cfg, cut)
    stop_at_last = t._interrupt

    def interrupt():
        if t.iter_collected and t.online_env_steps >= cfg.online.online_steps and t.iter_updates:
            t._stop = True
        return stop_at_last()

    t._interrupt = interrupt
    try:
        assert t.run().interrupted
    finally:
        t.close()
        torch.set_num_threads(threads)
    assert len(_rows(cut)) < len(_rows(full))
    r = run_cli(*ARGS, "--out", str(cut), "--resume")
    assert r.exit_code == 0, r.stderr
    assert "has finished" not in r.stderr
    assert _rows(cut) == _rows(full)
