"""`vidt eval --compare V1,V2`: the same seeds on two model versions of one real server (a real
model repository, real env, real onnxruntime), alternating, and the difference of their mean
returns with a paired bootstrap interval.

The two versions differ in quality by construction, on InvertedPendulum-v5 (the return is the
number of steps the pole stays up). Both are the same tiny actor (the same weights, the env's
action bounds, as versions of one server must have), conditioned on a different return:
"push" asks for a huge return-to-go, which saturates the actor at full force one way, so the
pole falls at the second step whatever the seed; "steady" asks for a return near 0 and keeps
the pole up for about 20 steps, a number that varies with the seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from serving_util import make_policy_onnx, running_server

from vidt.serving.client import PolicyClient
from vidt.serving.evaluate import compare_versions
from vidt.serving.repository import ModelRepository
from vidt.serving.runtime import OnnxPolicy

ENV = "InvertedPendulum-v5"
PUSH_RETURN, PUSH_LENGTH = 2.0, 3  # the pole is down at the third step, which pays 0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A model repository holding both versions, push current: (repository, push, steady)."""
    files = tmp_path_factory.mktemp("files")
    repo = ModelRepository(tmp_path_factory.mktemp("models"))
    kw = dict(obs_dim=4, act_dim=1, env_id=ENV, low=-3.0, high=3.0, seed=4)
    push = repo.add(make_policy_onnx(files / "push.onnx", default_target_return=1e5, **kw))
    steady = repo.add(make_policy_onnx(files / "steady.onnx", default_target_return=0.0, **kw))
    repo.promote(push.version)
    return repo, push, steady


@pytest.fixture
def server(models):
    repo, push, _ = models
    with running_server(OnnxPolicy(push.path, provider="cpu", intra_op_threads=1), repo=repo,
                        follow_pointer=True) as srv:
        yield srv


def _json(res) -> dict:
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def _returns(run_cli, server, version: str, episodes: int) -> np.ndarray:
    """One version alone on seeds 0 .. episodes - 1, in seed order (a single env)."""
    got = _json(run_cli("eval", "--server", server.address, "--episodes", str(episodes),
                        "--model-version", version, "--json", "--no-progress"))
    return np.asarray(got["returns"])


def test_the_better_version_is_named_with_an_interval_that_excludes_0(run_cli, server, models):
    _, push, steady = models
    base = ["eval", "--server", server.address, "--env", ENV, "--episodes", "8", "--no-progress"]
    alone = {v: _returns(run_cli, server, v, 8) for v in (push.version, steady.version)}
    assert np.all(alone[push.version] == PUSH_RETURN) and alone[steady.version].min() > 10

    got = _json(run_cli(*base, "--compare", f"{push.version},{steady.version}", "--json"))
    assert got["versions"] == [push.version, steady.version]
    assert [r["model_versions"] for r in got["results"]] == [[push.version] * 8,
                                                             [steady.version] * 8]
    assert (got["pairs"], got["pairs_dropped"], got["failed"], got["not_run"]) == (8, 0, 0, 0)
    assert got["pair_seeds"] == list(range(8))
    # Each pair is one seed: V2's return on it minus V1's, as each version gives it alone.
    want = alone[steady.version] - alone[push.version]
    assert got["differences"] == want.tolist()
    assert got["difference"] == pytest.approx(want.mean())
    lo, hi = got["interval"]
    assert 0 < lo < want.mean() < hi
    assert got["better"] == steady.version and not got["constant"]
    # The interval is the 95% percentile interval of the mean over resampled pairs.
    rng = np.random.default_rng(12345)
    means = want[rng.integers(0, 8, size=(20_000, 8))].mean(axis=1)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=0.2)

    # The other way round, in batches of 3 (ActBatch): the same pairs, the sign turned over.
    other = _json(run_cli(*base, "--compare", f"{steady.version},{push.version}", "--num-envs",
                          "3", "--json"))
    assert other["pair_seeds"] == list(range(8))
    assert other["differences"] == (-want).tolist()
    assert other["interval"] == pytest.approx([-hi, -lo])
    assert other["better"] == steady.version

    res = run_cli(*base, "--compare", f"{push.version},{steady.version}")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == (f"{ENV}: model versions V1 and V2 on the same seeds 0-7, one episode "
                        f"on each in turn")
    assert lines[2].split()[:6] == ["V1", push.version, "2.00", "±", "0.00", "8"]
    assert lines[3].split()[:2] == ["V2", steady.version]
    assert lines[4].startswith(f"V2 - V1: {want.mean():+.2f} over 8 pair(s), 95% interval "
                               f"[{lo:+.2f}, {hi:+.2f}] (paired bootstrap")
    assert lines[5] == f"V2 ({steady.version}) is better: the interval excludes 0"


def test_the_same_version_twice_differs_by_exactly_0_with_an_interval_of_0(
        run_cli, server, models):
    """On a deterministic env and policy each seed's two episodes are the same episode. The
    returns vary from seed to seed, so only pairing by seed makes the difference exactly 0."""
    _, _, steady = models
    args = ["eval", "--server", server.address, "--episodes", "8", "--no-progress",
            "--compare", f"{steady.version},{steady.version}"]
    got = _json(run_cli(*args, "--json"))
    first, second = (r["returns"] for r in got["results"])
    assert first == second and len(set(first)) > 1
    assert got["differences"] == [0.0] * 8 and got["difference"] == 0.0
    assert got["interval"] == [0.0, 0.0] and got["constant"] and got["better"] is None
    res = run_cli(*args)
    assert res.exit_code == 0, res.stderr
    assert "V2 - V1: +0.00 over 8 pair(s), 95% interval [+0.00, +0.00]" in res.stdout
    assert ("no difference: both returned exactly the same on each of the 8 seeds (a "
            "deterministic env and policy), so the interval is [0, 0]") in res.stdout


@pytest.mark.parametrize("num_envs, episodes, order", [
    (1, 4, "PSPSPSPS"),  # seed s on V1, then seed s on V2
    (3, 7, "PPPSSSPPPSSSPS"),  # a batch of 3 seeds on V1, then the same batch on V2
])
def test_episodes_alternate_between_the_versions(server, models, num_envs, episodes, order):
    _, push, steady = models
    seen = []
    with PolicyClient(server.address) as client:
        cmp = compare_versions(client, ENV, (push.version, steady.version), episodes,
                               num_envs=num_envs,
                               on_episode=lambda ret, n: seen.append(
                                   "P" if n == PUSH_LENGTH else "S"))
    assert "".join(seen) == order
    assert cmp.pair_seeds == tuple(range(episodes))


def test_a_lost_server_drops_the_pairs_it_left_unfinished_and_counts_them(models):
    """The server goes away after the fifth episode (seed 2 on V1): seed 2 on V2 and both
    episodes of seed 3 fail, which ends the run (three failures in a row); seeds 4-7 are
    not run. Only seeds 0 and 1 finished on both versions."""
    repo, push, steady = models
    policy = OnnxPolicy(push.path, provider="cpu", intra_op_threads=1)
    finished = []
    with running_server(policy, repo=repo, follow_pointer=True) as srv, \
            PolicyClient(srv.address, failover=False, retries=0, timeout_s=0.5) as client:
        def on_episode(ret, n):
            finished.append(ret)
            if len(finished) == 5:
                srv.stop(grace=0)

        cmp = compare_versions(client, ENV, (push.version, steady.version), 8,
                               on_episode=on_episode)
    v1, v2 = cmp.results
    assert (len(v1.returns), len(v1.failed), v1.not_run) == (3, 1, 4)
    assert (len(v2.returns), len(v2.failed), v2.not_run) == (2, 2, 4)
    assert cmp.pair_seeds == (0, 1) and (cmp.pairs, cmp.pairs_dropped) == (2, 6)
    assert cmp.differences == (finished[1] - finished[0], finished[3] - finished[2])
    got = cmp.to_json()
    assert (got["failed"], got["not_run"], got["pairs"]) == (3, 8, 2)


def test_an_unknown_version_is_one_line_before_any_episode(run_cli, server, models):
    repo, push, _ = models
    for extra in ([], ["--json"]):
        res = run_cli("eval", "--server", server.address, "--episodes", "2", "--no-progress",
                      "--compare", f"{push.version},0123456789abcdef", *extra)
        assert res.exit_code == 1 and res.stdout == ""
        assert res.stderr.splitlines() == [
            f"Error: model_version '0123456789abcdef' is neither held by this server nor in "
            f"its model repository {repo.root} (FAILED_PRECONDITION); "
            f"`vidt models list DIR` lists the versions of a model repository"]


@pytest.mark.parametrize("args, says", [
    (("--compare", "a"), "is not two model versions V1,V2"),
    (("--compare", "a,b,c"), "is not two model versions V1,V2"),
    (("--compare", "a,"), "is not two model versions V1,V2"),
    (("--compare", "a,b", "--model-version", "a"), "--compare and --model-version do not go"),
    (("--compare", "a,b", "--target-returns", "0,1"), "--compare and --target-returns do not"),
    (("--compare", "a,b", "--record", "videos"), "--compare and --record do not go together"),
])
def test_mistakes_with_compare_are_usage_errors(run_cli, args, says):
    res = run_cli("eval", "--server", "127.0.0.1:1", *args)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]
    assert res.exit_code == 2 and len(errors) == 1 and says in errors[0], res.stderr
