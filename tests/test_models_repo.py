"""The model repository (`vidt.serving.repository`) and `vidt models`, on real policy files:
listing, promote / canary / rollback and the pointer file they write, a hand-edited pointer,
and every refusal with its one line and exit status."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import tomllib
from serving_util import make_policy_onnx

from vidt.errors import ConfigError, ModelFileError
from vidt.policy_file import OnnxPolicy
from vidt.serving.repository import POINTER_NAME, ModelRepository, Pointer, compatible


def version_of(path: Path) -> str:
    return OnnxPolicy(path, provider="cpu").metadata.model_version


@pytest.fixture
def exports(tmp_path) -> dict[str, Path]:
    """Policy files outside the repository: three versions of one Pendulum policy, and three
    that cannot serve beside them."""
    d = tmp_path / "exports"
    d.mkdir()
    pend = dict(obs_dim=3, act_dim=1, env_id="Pendulum-v1", low=-2.0, high=2.0)
    files = {f"v{i}": make_policy_onnx(d / f"v{i}.onnx", seed=i, **pend) for i in (1, 2, 3)}
    files["other_env"] = make_policy_onnx(d / "hopper.onnx", **{**pend, "env_id": "Hopper-v5"})
    files["other_dims"] = make_policy_onnx(d / "dims.onnx", **{**pend, "obs_dim": 4})
    files["other_bounds"] = make_policy_onnx(d / "bounds.onnx", **{**pend, "high": 1.0})
    return files


@pytest.fixture
def repo_dir(tmp_path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    return d


def pointer_of(repo_dir: Path) -> dict:
    return tomllib.loads((repo_dir / POINTER_NAME).read_text())


def one_line_error(res, says: str) -> None:
    err = res.stderr.strip()
    assert err.splitlines() == [err] and err.startswith("Error: "), res.stderr
    assert "Traceback" not in res.stderr and says in err, err


# ---- list ----------------------------------------------------------------------------------
def test_list_shows_each_version_what_serves_and_why_a_file_cannot(run_cli, exports, repo_dir):
    shutil.copy(exports["v1"], repo_dir / "a.onnx")
    shutil.copy(exports["v2"], repo_dir / "b.onnx")
    (repo_dir / "broken.onnx").write_bytes(exports["v3"].read_bytes()[:300])
    v1, v2 = version_of(exports["v1"]), version_of(exports["v2"])
    assert run_cli("models", "promote", str(repo_dir), "a.onnx").exit_code == 0
    assert run_cli("models", "canary", str(repo_dir), "b.onnx", "--fraction", "0.25").exit_code == 0

    res = run_cli("models", "list", str(repo_dir))
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    kib = f"{exports['v1'].stat().st_size / 1024:.1f}"  # the three files are one size
    assert lines[0].split() == ["version", "file", "env", "obs/act", "K", "size", "serving"]
    assert lines[1].split() == [v1, "a.onnx", "Pendulum-v1", "3/1", "4", kib, "KiB", "current"]
    assert lines[2].split() == [v2, "b.onnx", "Pendulum-v1", "3/1", "4", kib, "KiB", "canary",
                                "25%"]
    assert lines[3].startswith("broken.onnx: cannot serve: not a loadable ONNX model")
    assert len(lines) == 4

    res = run_cli("models", "list", str(repo_dir), "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["pointer"] == {"current": v1, "canary": v2, "canary_fraction": 0.25,
                              "previous": None}
    assert out["pointer_error"] is None
    assert [(m["version"], m["file"], m["role"]) for m in out["models"]] == [
        (v1, "a.onnx", "current"), (v2, "b.onnx", "canary")]
    assert out["models"][0] | {"size": 0} == {
        "version": v1, "file": "a.onnx", "model_name": "tiny-test-actor",
        "env_id": "Pendulum-v1", "obs_dim": 3, "act_dim": 1, "context_len": 4, "size": 0,
        "role": "current"}
    assert out["models"][0]["size"] == exports["v1"].stat().st_size
    assert [i["file"] for i in out["invalid"]] == ["broken.onnx"]
    assert "not a loadable ONNX model" in out["invalid"][0]["reason"]


def test_list_of_an_empty_directory_says_so(run_cli, repo_dir):
    res = run_cli("models", "list", str(repo_dir))
    assert res.exit_code == 0 and res.stdout.strip() == f"no policy files (*.onnx) in {repo_dir}"


def test_help_says_what_the_pointer_is_and_when_servers_read_it(run_cli):
    res = run_cli("models", "--help")
    assert res.exit_code == 0
    text = " ".join(res.stdout.split())
    for says in ("pointer.toml", "current", "canary_fraction", "previous", "SIGHUP",
                 "every few seconds", "--model-repo"):
        assert says in text, says


# ---- promote, canary, rollback ----------------------------------------------------------------
def test_promote_canary_rollback_round_trip(run_cli, exports, repo_dir):
    v1, v2, v3 = (version_of(exports[k]) for k in ("v1", "v2", "v3"))
    root = str(repo_dir)

    res = run_cli("models", "promote", root, str(exports["v1"]))
    assert res.exit_code == 0, res.stderr
    assert res.stdout == f"current none -> {v1}\n"
    assert "SIGHUP" in res.stderr
    copied = repo_dir / f"{v1}.onnx"  # a file from outside is copied in under its version
    assert copied.read_bytes() == exports["v1"].read_bytes()
    assert pointer_of(repo_dir) == {"current": v1}

    res = run_cli("models", "canary", root, str(exports["v2"]), "--fraction", "0.1")
    assert res.exit_code == 0, res.stderr
    assert res.stdout == f"canary none -> {v2} at 10%\n"
    assert pointer_of(repo_dir) == {"current": v1, "canary": v2, "canary_fraction": 0.1}

    # Promoting the canary (by version, now that it is in the repository) ends the canary.
    res = run_cli("models", "promote", root, v2, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout) == {
        "command": "promote", "repository": root,
        "before": {"current": v1, "canary": v2, "canary_fraction": 0.1, "previous": None},
        "after": {"current": v2, "canary": None, "canary_fraction": 0.0, "previous": v1}}
    assert pointer_of(repo_dir) == {"current": v2, "previous": v1}

    res = run_cli("models", "rollback", root)
    assert res.exit_code == 0, res.stderr
    assert res.stdout == f"current {v2} -> {v1}, previous {v1} -> {v2}\n"
    assert pointer_of(repo_dir) == {"current": v1, "previous": v2}
    assert run_cli("models", "rollback", root).exit_code == 0  # a second one undoes the first
    assert pointer_of(repo_dir) == {"current": v2, "previous": v1}

    # A canary survives a rollback; --fraction 0 ends it without naming it.
    assert run_cli("models", "canary", root, str(exports["v3"]), "--fraction", "1").exit_code == 0
    assert run_cli("models", "rollback", root).exit_code == 0
    assert pointer_of(repo_dir) == {"current": v1, "canary": v3, "canary_fraction": 1.0,
                                    "previous": v2}
    res = run_cli("models", "canary", root, "--fraction", "0")
    assert res.exit_code == 0, res.stderr
    assert res.stdout == f"canary {v3} at 100% -> none\n"
    assert pointer_of(repo_dir) == {"current": v1, "previous": v2}

    # Promoting what is current changes nothing and says so.
    before = (repo_dir / POINTER_NAME).read_bytes()
    res = run_cli("models", "promote", root, str(exports["v1"]))
    assert res.exit_code == 0 and res.stdout.startswith("no change (current " + v1)
    assert (repo_dir / POINTER_NAME).read_bytes() == before
    assert sorted(p.name for p in repo_dir.iterdir()) == sorted(
        [POINTER_NAME, f"{v1}.onnx", f"{v2}.onnx", f"{v3}.onnx"])


def test_the_pointer_file_says_what_its_keys_mean(exports, repo_dir):
    repo = ModelRepository(repo_dir)
    repo.promote(exports["v1"])
    repo.set_canary(exports["v2"], 0.5)
    text = (repo_dir / POINTER_NAME).read_text()
    comments = [ln for ln in text.splitlines() if ln.startswith("#")]
    keys = [ln.split(" = ")[0] for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert keys == ["current", "canary", "canary_fraction"]
    header = " ".join(comments)
    for says in ("`vidt models`", "current", "canary", "canary_fraction", "previous", "SIGHUP"):
        assert says in header, says


def test_a_file_already_in_the_repository_is_not_copied_again(exports, repo_dir):
    shutil.copy(exports["v1"], repo_dir / "mine.onnx")
    repo = ModelRepository(repo_dir)
    assert repo.add(exports["v1"]).path == repo_dir / "mine.onnx"
    assert repo.promote(exports["v1"]).current == version_of(exports["v1"])
    assert sorted(p.name for p in repo_dir.glob("*.onnx")) == ["mine.onnx"]
    e = repo.add(exports["v2"])
    assert e.path == repo_dir / f"{e.version}.onnx" and e.path.is_file()


def test_two_files_of_one_version_are_one_version(exports, repo_dir):
    shutil.copy(exports["v1"], repo_dir / "a.onnx")
    shutil.copy(exports["v1"], repo_dir / "b.onnx")
    repo = ModelRepository(repo_dir)
    valid, invalid = repo.scan()
    assert list(valid) == [version_of(exports["v1"])] and not invalid
    assert repo.resolve("b.onnx").version == repo.resolve("a.onnx").version


def test_a_bare_name_is_a_file_of_the_repository_unless_two_files_have_it(
        exports, repo_dir, tmp_path, monkeypatch):
    repo = ModelRepository(repo_dir)
    monkeypatch.chdir(tmp_path / "exports")
    assert repo.resolve("v1.onnx").path == Path("v1.onnx")  # only here: this one
    shutil.copy(exports["v2"], repo_dir / "v2.onnx")
    shutil.copy(exports["v2"], repo_dir / "v1.onnx")  # a v1.onnx in the repository too
    with pytest.raises(ModelFileError, match=r"v1.onnx names a file here and another in .*"
                                             r"write ./v1.onnx"):
        repo.resolve("v1.onnx")
    assert repo.resolve("./v1.onnx").version == version_of(exports["v1"])
    assert repo.resolve("v2.onnx").path == repo_dir / "v2.onnx"  # the same version in both


def test_a_hand_edited_pointer_naming_files_resolves_to_versions(run_cli, exports, repo_dir):
    for name in ("v1", "v2", "v3"):
        shutil.copy(exports[name], repo_dir / f"{name}.onnx")
    v1, v2, v3 = (version_of(exports[k]) for k in ("v1", "v2", "v3"))
    (repo_dir / POINTER_NAME).write_text(
        f'current = "v2.onnx"\nprevious = "v1.onnx"\ncanary = "{v3}"\ncanary_fraction = 0.5\n')
    assert ModelRepository(repo_dir).read_pointer() == Pointer(
        current=v2, canary=v3, canary_fraction=0.5, previous=v1)
    res = run_cli("models", "list", str(repo_dir), "--json")
    assert res.exit_code == 0, res.stderr
    assert {m["file"]: m["role"] for m in json.loads(res.stdout)["models"]} == {
        "v1.onnx": "previous", "v2.onnx": "current", "v3.onnx": "canary"}
    assert run_cli("models", "rollback", str(repo_dir)).exit_code == 0
    assert pointer_of(repo_dir) == {"current": v1, "canary": v3, "canary_fraction": 0.5,
                                    "previous": v2}  # written back as versions


# ---- refusals ------------------------------------------------------------------------------
def _corrupt(src: Path, dst: Path, how: str) -> Path:
    data = bytearray(src.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:  # the protobuf's first bytes overwritten
        data[:64] = b"\xff" * 64
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("command, target, says", [
    ("promote", "truncated", "not a loadable ONNX model"),
    ("promote", "garbled", "not a loadable ONNX model"),
    ("promote", "other_env", "env_id 'Hopper-v5' vs 'Pendulum-v1'"),
    ("promote", "other_dims", "obs_dim 4 vs 3"),
    ("canary", "other_env", "env_id 'Hopper-v5' vs 'Pendulum-v1'"),
    ("canary", "other_bounds", "action bounds [-2.0]..[1.0] vs [-2.0]..[2.0]"),
    ("canary", "truncated", "not a loadable ONNX model"),
    ("promote", "unknown version", "no such file, and no model version 0123456789abcdef"),
    ("promote", "missing file", "no such file"),
])
def test_a_file_that_cannot_serve_is_refused_in_one_line(run_cli, exports, repo_dir, tmp_path,
                                                         command, target, says):
    root = str(repo_dir)
    assert run_cli("models", "promote", root, str(exports["v1"])).exit_code == 0
    before = sorted(p.name for p in repo_dir.iterdir()), (repo_dir / POINTER_NAME).read_bytes()
    if target in ("truncated", "garbled"):
        ref = str(_corrupt(exports["v2"], tmp_path / f"{target}.onnx", target))
    else:
        ref = {"unknown version": "0123456789abcdef",
               "missing file": str(tmp_path / "nowhere.onnx")}.get(target) or str(exports[target])
    args = ["models", command, root, ref] + (["--fraction", "0.5"] if command == "canary" else [])
    res = run_cli(*args)
    assert res.exit_code == 1 and res.stdout == ""
    one_line_error(res, says)
    # Nothing changed: no file copied in, the pointer as it was.
    assert (sorted(p.name for p in repo_dir.iterdir()),
            (repo_dir / POINTER_NAME).read_bytes()) == before


def test_rollback_without_a_previous_version_is_refused(run_cli, exports, repo_dir):
    res = run_cli("models", "rollback", str(repo_dir))  # no pointer at all
    assert res.exit_code == 1
    one_line_error(res, "no previous version to roll back to")
    assert not (repo_dir / POINTER_NAME).exists()
    assert run_cli("models", "promote", str(repo_dir), str(exports["v1"])).exit_code == 0
    res = run_cli("models", "rollback", str(repo_dir))
    assert res.exit_code == 1
    one_line_error(res, f"{repo_dir / POINTER_NAME}: no previous version")


def test_a_pointer_naming_a_missing_file_is_reported_and_blocks_changes(run_cli, exports,
                                                                       repo_dir):
    shutil.copy(exports["v1"], repo_dir / "v1.onnx")
    (repo_dir / POINTER_NAME).write_text('current = "v1.onnx"\nprevious = "gone.onnx"\n')
    says = f"{repo_dir / POINTER_NAME}: previous = 'gone.onnx': no model version or .onnx file"
    res = run_cli("models", "list", str(repo_dir))
    assert res.exit_code == 1
    assert res.stdout.splitlines()[1].split()[1] == "v1.onnx"  # the files are still listed
    one_line_error(res, says)
    res = run_cli("models", "list", str(repo_dir), "--json")
    assert res.exit_code == 1 and says in json.loads(res.stdout)["pointer_error"]
    for args in (["promote", str(exports["v2"])], ["rollback"],
                 ["canary", str(exports["v2"]), "--fraction", "0.5"]):
        res = run_cli("models", args[0], str(repo_dir), *args[1:])
        assert res.exit_code == 1, args
        one_line_error(res, says)
    assert sorted(p.name for p in repo_dir.glob("*.onnx")) == ["v1.onnx"]


@pytest.mark.parametrize("args, says", [
    (["canary", "{root}", "{v2}", "--fraction", "1.5"], "1.5 is not in [0, 1]"),
    (["canary", "{root}", "{v2}", "--fraction", "nan"], "'nan' is not a finite number"),
    (["canary", "{root}", "--fraction", "0.5"], "name the canary (FILE|VERSION)"),
    (["canary", "{root}", "{v2}"], "Missing option '--fraction'"),
    (["promote", "{root}"], "Missing argument 'FILE|VERSION'"),
    (["list", "{root}", "--frmat"], "No such option '--frmat'"),
])
def test_command_line_mistakes_exit_2(run_cli, exports, repo_dir, args, says):
    assert run_cli("models", "promote", str(repo_dir), str(exports["v1"])).exit_code == 0
    before = (repo_dir / POINTER_NAME).read_bytes()
    res = run_cli("models", *(a.format(root=repo_dir, v2=exports["v2"]) for a in args))
    assert res.exit_code == 2 and says in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert (repo_dir / POINTER_NAME).read_bytes() == before


def test_a_repository_that_is_not_a_directory_is_exit_1(run_cli, exports, tmp_path):
    for path in (tmp_path / "nowhere", exports["v1"]):
        res = run_cli("models", "list", str(path))
        assert res.exit_code == 1 and "Traceback" not in res.stderr, res.stderr
    with pytest.raises(ConfigError, match="not a directory"):
        ModelRepository(exports["v1"])


@pytest.mark.parametrize("text, error, says", [
    ('current = "v1.onnx\n', ConfigError, "not valid TOML"),
    ('current = "v1.onnx"\ncanary_fracton = 0.5\n', ConfigError, "unknown key 'canary_fracton'"),
    ('current = "v1.onnx"\ncanary = "v2.onnx"\ncanary_fraction = 1.5\n', ConfigError,
     "canary_fraction must be a number in [0, 1], got 1.5"),
    ('current = "v1.onnx"\ncanary_fraction = 0.5\n', ConfigError,
     "canary_fraction = 0.5 without a canary"),
    ('current = "v1.onnx"\ncanary = "v2.onnx"\n', ConfigError, "canary_fraction 0"),
    ('canary = "v2.onnx"\ncanary_fraction = 0.5\n', ConfigError, "without a current version"),
    ("current = 3\n", ConfigError, "current must be a string"),
    ('current = "v1.onnx"\ncanary = "v2.onnx"\ncanary_fraction = true\n', ConfigError,
     "canary_fraction must be a number"),
    ('current = "nowhere.onnx"\n', ModelFileError, "current = 'nowhere.onnx': no model version"),
    ('current = "../exports/v1.onnx"\n', ModelFileError, "no model version or .onnx file"),
    ('current = "broken.onnx"\n', ModelFileError, "'broken.onnx': not a loadable ONNX model"),
    ('current = "v1.onnx"\ncanary = "hopper.onnx"\ncanary_fraction = 0.5\n', ModelFileError,
     "canary ({hopper}) cannot serve beside current version {v1}: env_id"),
])
def test_a_broken_pointer_is_refused_naming_the_file(exports, repo_dir, text, error, says):
    for name in ("v1", "v2"):
        shutil.copy(exports[name], repo_dir / f"{name}.onnx")
    shutil.copy(exports["other_env"], repo_dir / "hopper.onnx")
    _corrupt(exports["v3"], repo_dir / "broken.onnx", "truncated")
    (repo_dir / POINTER_NAME).write_text(text)
    with pytest.raises(error) as got:
        ModelRepository(repo_dir).read_pointer()
    msg = str(got.value)
    assert msg.startswith(f"{repo_dir / POINTER_NAME}: ") and "\n" not in msg, msg
    assert says.format(hopper=version_of(exports["other_env"]),
                       v1=version_of(exports["v1"])) in msg, msg


def test_compatible_compares_entries_and_file_metadata_alike(exports, repo_dir):
    repo = ModelRepository(repo_dir)
    v1 = repo.resolve(str(exports["v1"]))
    meta = {k: OnnxPolicy(p, provider="cpu").metadata for k, p in exports.items()}
    assert compatible(v1, meta["v2"]) is None and compatible(meta["v2"], v1) is None
    assert compatible(v1, meta["other_dims"]) == "obs_dim 3 vs 4"
    assert compatible(meta["other_bounds"], v1) == "action bounds [-2.0]..[1.0] vs [-2.0]..[2.0]"
    assert compatible(repo.resolve(str(exports["other_env"])), v1) == \
        "env_id 'Hopper-v5' vs 'Pendulum-v1'"


# ---- what a server relies on --------------------------------------------------------------
def test_the_pointer_is_replaced_whole_never_rewritten_in_place(exports, repo_dir):
    repo = ModelRepository(repo_dir)
    repo.promote(exports["v1"])
    repo.add(exports["v2"])
    v1, v2 = version_of(exports["v1"]), version_of(exports["v2"])
    seen, errors, done = [], [], threading.Event()

    def reader():  # what a server does while `vidt models` writes
        while not done.is_set():
            try:
                seen.append(tomllib.loads((repo_dir / POINTER_NAME).read_text())["current"])
            except Exception as e:  # a half-written file: empty, cut short, a key missing
                errors.append(repr(e))

    t = threading.Thread(target=reader)
    t.start()
    inodes = set()
    try:
        for i in range(100):
            repo.write_pointer(Pointer(current=(v1, v2)[i % 2], previous=(v2, v1)[i % 2]))
            inodes.add((repo_dir / POINTER_NAME).stat().st_ino)
    finally:
        done.set()
        t.join()
    assert not errors and set(seen) <= {v1, v2}
    assert len(inodes) > 1  # each write a new file renamed over the old one
    assert sorted(p.name for p in repo_dir.iterdir()) == sorted(
        [POINTER_NAME, f"{v1}.onnx", f"{v2}.onnx"])  # no temp file left behind


def test_a_rescan_opens_only_files_that_changed(exports, repo_dir):
    shutil.copy(exports["v1"], repo_dir / "a.onnx")
    shutil.copy(exports["v2"], repo_dir / "b.onnx")
    repo = ModelRepository(repo_dir)
    first, _ = repo.scan()
    again, _ = repo.scan()
    assert all(again[v] is first[v] for v in first)  # the same objects: nothing reopened
    tmp = repo_dir / ".swap"
    shutil.copy(exports["v3"], tmp)
    os.replace(tmp, repo_dir / "b.onnx")  # replaced by rename, as a deploy tool does
    (repo_dir / "c.onnx").write_bytes(b"not yet whole")
    now, invalid = repo.scan()
    v1, v3 = version_of(exports["v1"]), version_of(exports["v3"])
    assert set(now) == {v1, v3} and now[v1] is first[v1]
    assert list(invalid) == [repo_dir / "c.onnx"]
    shutil.copy(exports["v2"], repo_dir / "c.onnx")  # the copy finished
    assert version_of(exports["v2"]) in repo.scan()[0]
    assert repo.entry(v3).path == repo_dir / "b.onnx" and repo.entry("nope") is None


def test_vidt_models_runs_without_torch(exports, repo_dir):
    """As in the serving image: the command is listed and works with torch absent."""
    block = ("import sys\nsys.modules['torch'] = None\nfrom vidt.cli.main import main\n"
             "main(sys.argv[1:])")
    run = [sys.executable, "-c", block]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0 and "models" in p.stdout.split("Commands:")[1].split(), p.stderr
    p = subprocess.run([*run, "models", "promote", str(repo_dir), str(exports["v1"])],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([*run, "models", "list", str(repo_dir)], capture_output=True, text=True,
                       timeout=120, env=env)
    assert p.returncode == 0 and "current" in p.stdout, p.stderr
