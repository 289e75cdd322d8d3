"""Corrupt, truncated, foreign and mismatched inputs through every command: each gets a clear
one-line error and the exit status of `vidt --help`'s rule (1 for what the command line
names, 2 for the command line itself), never a traceback. Broken files are made from real good
ones (a collected dataset, a trained run, its exported ONNX file), through the real CLI entry
point in-process (an unexpected exception would fail the test with its traceback)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from serving_util import free_port, make_policy_onnx, running_server

COUNTS: Counter = Counter()  # cases per category, printed with `pytest -s` for RESULTS.md
TINY = ["--preset", "tiny", "--pretrain-updates", "10", "--online-steps", "200", "--no-progress",
        "--set", "threads=1", "--set", "online.updates_per_iter=5"]


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    print(f"\nbad-input cases per category: {dict(COUNTS)}")


def assert_clear_error(res, *needles: str, case: str = "", code: int = 1) -> None:
    """One `Error:` line naming `needles`, exit `code` (1: a broken input; 2: a mistake in the
    command line), no traceback; `case` labels a failure."""
    try:
        _clear_error(res, needles, code)
    except AssertionError as e:
        raise AssertionError(f"{case}: {e}" if case else str(e)) from None


def _clear_error(res, needles, code) -> None:
    assert res.exit_code == code, (res.exit_code, res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, res.stderr[-2000:]
    assert len(errors[0]) < 600, errors[0]  # one line a person reads, not a dump
    for n in needles:
        assert n.lower() in errors[0].lower(), errors[0]


def corruptions(good: bytes, rng: np.random.Generator) -> dict[str, bytes]:
    """Ways a file breaks on disk or in transfer."""
    flipped = bytearray(good)
    for i in rng.choice(len(good), size=max(1, len(good) // 50), replace=False):
        flipped[i] ^= 0xFF
    return {"empty": b"", "first byte": good[:1], "first half": good[: len(good) // 2],
            "all but the last byte": good[:-1], "random bytes": rng.bytes(len(good)),
            "2% of bytes flipped": bytes(flipped), "text": b"hello, this is not the file\n"}


@pytest.fixture(scope="module")
def good(tmp_path_factory, run_cli_module):
    """A collected dataset, a D4RL-layout copy of it, a trained tiny run and its ONNX file."""
    d = tmp_path_factory.mktemp("good")
    r = run_cli_module("collect", "--env", "Pendulum-v1", "--steps", "600", "--seed", "0",
                       "--out", str(d / "data"))
    assert r.exit_code == 0, r.stderr
    r = run_cli_module("train", "--env", "Pendulum-v1", "--dataset", str(d / "data"), *TINY,
                       "--out", str(d / "run"))
    assert r.exit_code == 0, r.stderr
    r = run_cli_module("export", str(d / "run"), "--out", str(d / "policy.onnx"))
    assert r.exit_code == 0, r.stderr
    with h5py.File(d / "data" / "data" / "main_data.hdf5") as src, h5py.File(d / "d4rl.hdf5", "w") as dst:
        obs, act, rew, term, trunc = [], [], [], [], []
        for ep in src.values():
            obs.append(ep["observations"][:-1])
            act.append(ep["actions"][:])
            rew.append(ep["rewards"][:])
            term.append(ep["terminations"][:])
            trunc.append(ep["truncations"][:])
        for k, v in (("observations", obs), ("actions", act), ("rewards", rew),
                     ("terminals", term), ("timeouts", trunc)):
            dst[k] = np.concatenate(v)
    return d


@pytest.fixture(scope="module")
def run_cli_module():
    """run_cli for module fixtures (capsys is per test): same entry point, output captured."""
    import contextlib
    import io
    from types import SimpleNamespace

    from vidt.cli.main import main

    def run(*args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args))
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
        return SimpleNamespace(exit_code=code, stdout=out.getvalue(), stderr=err.getvalue())

    return run


def test_the_good_inputs_work(good, run_cli):
    """The baseline every broken variant is made from."""
    assert run_cli("datasets", "info", str(good / "data")).exit_code == 0
    assert run_cli("datasets", "info", str(good / "d4rl.hdf5"), "--env", "Pendulum-v1").exit_code == 0
    r = run_cli("collect", "--env", "Pendulum-v1", "--policy", str(good / "policy.onnx"),
                "--steps", "20", "--out", str(good / "collected"))
    assert r.exit_code == 0, r.stderr


# ---- datasets: `vidt datasets info` and `vidt train --dataset` --------------------------------

def broken_datasets(good: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (dataset source, a word the error must contain)."""
    rng = np.random.default_rng(0)
    out = {"missing path": (tmp / "nope", "nope"), "empty dir": (tmp / "empty", "empty")}
    (tmp / "empty").mkdir()
    main = (good / "data" / "data" / "main_data.hdf5").read_bytes()
    for name, data in corruptions(main, rng).items():
        d = tmp / f"minari-{len(out)}"
        shutil.copytree(good / "data", d)
        (d / "data" / "main_data.hdf5").write_bytes(data)
        out[f"minari main_data.hdf5: {name}"] = (d, "main_data.hdf5")
    meta = (good / "data" / "data" / "metadata.json").read_bytes()
    for name, data in {"metadata.json: invalid JSON": meta[: len(meta) // 2],
                       "metadata.json: a list": b"[1, 2]"}.items():
        d = tmp / f"minari-{len(out)}"
        shutil.copytree(good / "data", d)
        (d / "data" / "metadata.json").write_bytes(data)
        out[name] = (d, "metadata.json")
    d = tmp / f"minari-{len(out)}"
    shutil.copytree(good / "data", d)
    (d / "data" / "metadata.json").unlink()
    out["metadata.json missing"] = (d, str(d.name))
    h5 = (good / "d4rl.hdf5").read_bytes()
    for name, data in corruptions(h5, rng).items():
        p = tmp / f"d4rl-{len(out)}.hdf5"
        p.write_bytes(data)
        out[f"d4rl file: {name}"] = (p, p.name)

    def d4rl_variant(name: str, word: str, edit) -> None:
        p = tmp / f"d4rl-{len(out)}.hdf5"
        shutil.copyfile(good / "d4rl.hdf5", p)
        with h5py.File(p, "r+") as f:
            edit(f)
        out[f"d4rl file: {name}"] = (p, word)

    d4rl_variant("no rewards", "rewards", lambda f: f.__delitem__("rewards"))
    d4rl_variant("no terminals", "terminals", lambda f: f.__delitem__("terminals"))

    def shorter_actions(f):
        a = f["actions"][:-7]
        del f["actions"]
        f["actions"] = a
    d4rl_variant("actions shorter than observations", "actions", shorter_actions)

    def nan_obs(f):
        o = f["observations"][:]
        o[123, 1] = np.nan
        f["observations"][...] = o
    d4rl_variant("a NaN observation", "observations", nan_obs)

    def inf_reward(f):
        r = f["rewards"][:]
        r[5] = np.inf
        f["rewards"][...] = r
    d4rl_variant("an infinite reward", "rewards", inf_reward)

    def wide_obs(f):  # sizes of another env: Pendulum has 3
        o = np.concatenate([f["observations"][:], np.zeros((len(f["observations"]), 2), np.float32)], 1)
        del f["observations"]
        f["observations"] = o
    d4rl_variant("observations of another env (5 wide)", "3", wide_obs)

    def strings(f):
        n = len(f["rewards"])
        del f["rewards"]
        f["rewards"] = np.array(["x"] * n, dtype="S1")
    d4rl_variant("rewards stored as strings", "rewards", strings)
    return out


def test_broken_datasets_through_datasets_info_and_train(good, tmp_path, run_cli):
    for name, (source, word) in broken_datasets(good, tmp_path).items():
        info = run_cli("datasets", "info", str(source), "--env", "Pendulum-v1")
        assert_clear_error(info, word, case=f"datasets info, {name}")
        train = run_cli("train", "--env", "Pendulum-v1", "--dataset", str(source), *TINY,
                        "--out", str(tmp_path / "runs" / f"{len(COUNTS)}"))
        assert_clear_error(train, word, case=f"train --dataset, {name}")
        COUNTS["dataset"] += 2


# ---- ONNX files: `vidt collect --policy`, `vidt serve --model`, `vidt eval` ---------------------

def broken_models(good: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    rng = np.random.default_rng(1)
    out = {"missing file": (tmp / "nope.onnx", "nope.onnx")}
    for name, data in corruptions((good / "policy.onnx").read_bytes(), rng).items():
        p = tmp / f"m{len(out)}.onnx"
        p.write_bytes(data)
        out[name] = (p, p.name)
    import onnx
    from onnx import TensorProto, helper

    foreign = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])]))
    onnx.save(foreign, tmp / "foreign.onnx")
    out["a valid ONNX file that is not a vidt actor"] = (tmp / "foreign.onnx", "foreign.onnx")
    m = onnx.load(good / "policy.onnx")
    for p in m.metadata_props:
        if p.key == "vidt.format_version":
            p.value = "99"
    onnx.save(m, tmp / "future.onnx")
    out["a vidt file of a newer format"] = (tmp / "future.onnx", "format")
    return out


def test_broken_models_through_collect_and_serve(good, tmp_path, run_cli):
    for name, (model, word) in broken_models(good, tmp_path).items():
        col = run_cli("collect", "--env", "Pendulum-v1", "--policy", str(model), "--steps", "10",
                      "--out", str(tmp_path / f"c{len(COUNTS)}"))
        srv = run_cli("serve", "--model", str(model), "--port", str(free_port()))
        for cmd, res in (("collect --policy", col), ("serve --model", srv)):
            assert_clear_error(res, word, case=f"{cmd}, {name}")
        COUNTS["model"] += 2


def test_mismatched_model_through_collect_and_eval(good, tmp_path, run_cli):
    hopper = make_policy_onnx(tmp_path / "hopper.onnx", obs_dim=11, act_dim=3, env_id="Hopper-v5")
    col = run_cli("collect", "--env", "Pendulum-v1", "--policy", str(hopper), "--steps", "10",
                  "--out", str(tmp_path / "c"))
    assert_clear_error(col, "11")
    from vidt.serving.runtime import OnnxPolicy

    with running_server(OnnxPolicy(hopper, provider="cpu", intra_op_threads=1)) as server:
        ev = run_cli("eval", "--server", server.address, "--env", "Pendulum-v1", "--episodes", "1")
    assert_clear_error(ev, "Hopper-v5", "Pendulum-v1")
    gone = run_cli("eval", "--server", f"127.0.0.1:{free_port()}", "--env", "Pendulum-v1",
                   "--episodes", "1", "--timeout", "2")
    assert_clear_error(gone, "127.0.0.1")
    COUNTS["model"] += 3


def test_non_finite_target_returns_are_refused(good, tmp_path, run_cli):
    """A NaN target return would make NaN actions and a dataset of NaN rewards."""
    from vidt.serving.runtime import OnnxPolicy

    for bad in ("nan", "inf", "-inf"):
        col = run_cli("collect", "--env", "Pendulum-v1", "--policy", str(good / "policy.onnx"),
                      "--steps", "10", "--target-return", bad, "--out", str(tmp_path / bad))
        assert_clear_error(col, "target-return", code=2)
        assert not (tmp_path / bad).exists()
        with running_server(OnnxPolicy(good / "policy.onnx", provider="cpu")) as server:
            ev = run_cli("eval", "--server", server.address, "--env", "Pendulum-v1",
                         "--episodes", "1", "--target-return", bad)
        assert_clear_error(ev, "target-return", code=2)  # before a call (the server refuses it too)
        COUNTS["model"] += 2
    res = run_cli("train", "--env", "Pendulum-v1", "--seed", "-1", "--dry-run")
    assert_clear_error(res, "seed", code=2)
    COUNTS["config"] += 1


# ---- run directories and checkpoints: `vidt export`, `vidt train --resume` ---------------------

def test_broken_runs_through_export_and_resume(good, tmp_path, run_cli):
    import torch

    rng = np.random.default_rng(2)
    cases: dict[str, tuple[Path, str]] = {}

    def variant(name: str, word: str, edit, export_fails: bool, resume_fails: bool) -> None:
        d = tmp_path / f"run{len(cases)}"
        shutil.copytree(good / "run", d)
        edit(d)
        cases[name] = (d, word, export_fails, resume_fails)

    # export reads actor.pt; --resume reads config.json and checkpoint.pt
    for fname in ("checkpoint.pt", "actor.pt"):
        for cname, data in corruptions((good / "run" / fname).read_bytes(), rng).items():
            variant(f"{fname}: {cname}", fname, lambda d, f=fname, b=data: (d / f).write_bytes(b),
                    export_fails=fname == "actor.pt", resume_fails=fname == "checkpoint.pt")

    class Payload:  # what a malicious .pt would carry; weights_only=True must refuse it
        def __reduce__(self):
            return (print, ("this must never run",))

    def pickled(d: Path) -> None:
        torch.save({"format_version": 1, "x": Payload()}, d / "actor.pt")
        torch.save({"format_version": 1, "x": Payload()}, d / "checkpoint.pt")
    variant("checkpoints holding a pickled object", ".pt", pickled, True, True)
    variant("config.json: invalid JSON", "config.json",
            lambda d: (d / "config.json").write_text("{\"env_id\": "), False, True)
    variant("config.json: an unknown key", "no_such_key", lambda d: (d / "config.json").write_text(
        json.dumps({**json.loads((good / "run" / "config.json").read_text()), "no_such_key": 1})),
        False, True)
    variant("no actor.pt or checkpoint.pt", "checkpoint",
            lambda d: ((d / "checkpoint.pt").unlink(), (d / "actor.pt").unlink()), True, False)

    for name, (run_dir, word, export_fails, resume_fails) in cases.items():
        out = tmp_path / f"{run_dir.name}.onnx"
        checks = []
        if export_fails:
            checks.append(("export", run_cli("export", str(run_dir), "--out", str(out))))
        if resume_fails:
            checks.append(("train --resume", run_cli("train", "--out", str(run_dir), "--resume",
                                                     "--no-progress")))
        for cmd, res in checks:
            assert_clear_error(res, word, case=f"{cmd}, {name}")
            COUNTS["run dir"] += 1
        assert not out.exists()  # a failed export writes nothing


# ---- configs: `vidt train --config` and `--set` -------------------------------------------------

CONFIGS = {
    "TOML syntax error": ("[model\nd_model = 64\n", "bad.toml"),
    "binary garbage": (bytes(range(256)) * 4, "bad.toml"),
    "an unknown section": ("[nonsense]\nx = 1\n", "nonsense"),
    "an unknown key": ("[model]\nwidth = 64\n", "width"),
    "a string where a number goes": ("[model]\nd_model = \"big\"\n", "d_model"),
    "a negative batch size": ("[data]\nbatch_size = -5\n", "batch_size"),
    "a float where an int goes": ("[model]\nn_layer = 2.5\n", "n_layer"),
    "an unknown algo": ("algo = \"ppo\"\n", "ppo"),
    "an unknown device": ("device = \"tpu\"\n", "tpu"),
}
SETS = {
    "no value": ("model.d_model", "model.d_model"),
    "unknown key": ("model.nope=1", "nope"),
    "not a number": ("model.d_model=abc", "d_model"),
    "zero heads": ("model.n_head=0", "n_head"),
    "NaN learning rate": ("optim.actor_lr=nan", "actor_lr"),
    "negative seed": ("seed=-1", "seed"),
}


def test_broken_configs_through_train(good, tmp_path, run_cli):
    base = ["train", "--env", "Pendulum-v1", "--dataset", str(good / "data"), *TINY]
    for name, (text, word) in CONFIGS.items():
        p = tmp_path / "bad.toml"
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        for extra in (["--dry-run"], ["--out", str(tmp_path / "r")]):
            res = run_cli(*base, "--config", str(p), *extra)
            assert_clear_error(res, word, case=f"train --config, {name}")
            COUNTS["config"] += 1
    res = run_cli(*base, "--config", str(tmp_path / "missing.toml"), "--dry-run")
    assert_clear_error(res, "missing.toml")
    COUNTS["config"] += 1
    for name, (kv, word) in SETS.items():
        res = run_cli(*base, "--set", kv, "--dry-run")
        assert_clear_error(res, word, case=f"train --set, {name}", code=2)
        COUNTS["config"] += 1
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_outputs_that_cannot_be_written(good, tmp_path, run_cli):
    (tmp_path / "a_file").write_text("not a directory")
    under_file = tmp_path / "a_file" / "out"
    col = run_cli("collect", "--env", "Pendulum-v1", "--steps", "10", "--out", str(under_file))
    assert_clear_error(col, "a_file")
    ex = run_cli("export", str(good / "run"), "--out", str(under_file / "p.onnx"))
    assert_clear_error(ex, "a_file")
    COUNTS["output"] += 2
