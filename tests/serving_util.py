"""Helpers for the serving tests: a small ONNX file with the vidt contract, free ports, and a
real server on loopback. Not a test module (no `test_` prefix)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import numpy as np

from vidt.serving.server import free_port  # noqa: F401  (the tests take it from here)


def make_policy_onnx(path: str | Path, *, obs_dim: int = 3, act_dim: int = 2, K: int = 4,
                     eval_len: int = 3, env_id: str = "", low: float = -1.0, high: float = 1.0,
                     default_target_return: float = 10.0, max_episode_steps: int = 0,
                     seed: int = 0) -> Path:
    """A tiny actor with the exported signature and metadata, built with onnx.helper:

        action = mid + half * tanh(sum_k mask_k * (obs_k Wo + act_k Wa + rtg_k wr))

    Every input and every window slot changes the action, so a wrong window (padding, order,
    return-to-go bookkeeping) shows up as a different action.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    S, A = obs_dim, act_dim
    Wo = rng.normal(0, 0.5, (S, A)).astype(np.float32)
    Wa = rng.normal(0, 0.5, (A, A)).astype(np.float32)
    wr = rng.normal(0, 0.05, (A,)).astype(np.float32)
    mid = np.full(A, (high + low) / 2, np.float32)
    half = np.full(A, (high - low) / 2, np.float32)
    inits = [numpy_helper.from_array(v, n) for n, v in [
        ("Wo", Wo), ("Wa", Wa), ("wr", wr), ("mid", mid), ("half", half),
        ("ax2", np.array([2], np.int64)), ("ax1", np.array([1], np.int64))]]
    nodes = [
        helper.make_node("MatMul", ["observations", "Wo"], ["h_obs"]),  # (B, K, A)
        helper.make_node("MatMul", ["actions", "Wa"], ["h_act"]),  # (B, K, A)
        helper.make_node("Unsqueeze", ["returns_to_go", "ax2"], ["rtg3"]),  # (B, K, 1)
        helper.make_node("Mul", ["rtg3", "wr"], ["h_rtg"]),  # (B, K, A)
        helper.make_node("Sum", ["h_obs", "h_act", "h_rtg"], ["h"]),
        helper.make_node("Unsqueeze", ["mask", "ax2"], ["mask3"]),  # (B, K, 1)
        helper.make_node("Mul", ["h", "mask3"], ["hm"]),
        helper.make_node("ReduceSum", ["hm", "ax1"], ["z"], keepdims=0),  # (B, A)
        helper.make_node("Tanh", ["z"], ["t"]),
        helper.make_node("Mul", ["t", "half"], ["ts"]),
        helper.make_node("Add", ["ts", "mid"], ["action"]),
    ]
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "tiny_actor",
        [helper.make_tensor_value_info("observations", f32, ["batch", K, S]),
         helper.make_tensor_value_info("actions", f32, ["batch", K, A]),
         helper.make_tensor_value_info("returns_to_go", f32, ["batch", K]),
         helper.make_tensor_value_info("mask", f32, ["batch", K])],
        [helper.make_tensor_value_info("action", f32, ["batch", A])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    props = {
        "format_version": "1", "version": "test", "algo": "vidt", "env_id": env_id,
        "model_name": "tiny-test-actor", "obs_dim": str(S), "act_dim": str(A),
        "action_low": json.dumps([low] * A), "action_high": json.dumps([high] * A),
        "context_len": str(K), "eval_context_len": str(eval_len),
        "default_target_return": repr(float(default_target_return)), "reward_scale": "1.0",
        "max_episode_steps": str(max_episode_steps),
    }
    props["model_version"] = hashlib.sha256(
        model.SerializeToString() + json.dumps(props, sort_keys=True).encode()).hexdigest()[:16]
    helper.set_model_props(model, {f"vidt.{k}": v for k, v in props.items()})
    onnx.checker.check_model(model)
    path = Path(path)
    path.write_bytes(model.SerializeToString())
    return path


def make_dt_onnx(path: str | Path, *, obs_dim: int = 3, act_dim: int = 2, K: int = 4,
                 eval_len: int = 3, d_model: int = 32, n_layer: int = 2, n_head: int = 2,
                 default_target_return: float = 10.0, seed: int = 0, env_id: str = "",
                 act_bound: float = 1.0) -> Path:
    """A random-weight Decision Transformer actor exported by vidt's own exporter (parity
    checked as `vidt export` does): what a trained run's file is, minus the training.
    env_id and act_bound make it fit an env for `vidt eval` (Pendulum-v1: 3, 1, 2.0)."""
    import torch

    from vidt.export import export_actor
    from vidt.model import Actor, DecisionTransformer, ModelConfig, ModelSpec

    torch.manual_seed(seed)
    dt = DecisionTransformer(ModelSpec(obs_dim=obs_dim, act_dim=act_dim),
                             ModelConfig(context_len=K, d_model=d_model, n_layer=n_layer,
                                         n_head=n_head))
    actor = Actor(dt, state_mean=np.zeros(obs_dim), state_std=np.ones(obs_dim),
                  reward_scale=0.1, act_low=-act_bound * np.ones(act_dim),
                  act_high=act_bound * np.ones(act_dim)).eval()
    meta = dict(algo="vidt", eval_context_len=eval_len, env_id=env_id,
                eval_target_return=float(default_target_return), reward_scale=0.1)
    export_actor(actor, meta, path, model_name="test-dt")
    return Path(path)


class Clock:
    """A settable clock for SessionStore: expiry without sleeping."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def episode(n: int = 8, S: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random inputs of an n-step episode: observations (n, S) float32, rewards (n,)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, S)).astype(np.float32), rng.normal(size=n)




# The transport running_server uses unless told; test_serving_server.py runs on each.
TRANSPORT = {"name": "threads"}


@contextlib.contextmanager
def running_server(policy, *, repo=None, follow_pointer=False, **config):
    """A real PolicyServer on a free loopback port, stopped on exit. Yields the server.
    repo, follow_pointer: a model repository, as `vidt serve --model-repo` gives one."""
    from vidt.serving.server import PolicyServer, ServerConfig

    config.setdefault("port", 0)
    config.setdefault("transport", TRANSPORT["name"])
    server = PolicyServer(policy, ServerConfig(**config), repo=repo,
                          follow_pointer=follow_pointer)
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=0)


class NumpyActor:
    """The same function as make_policy_onnx's graph, in numpy: a predictor for testing the
    session core and the batcher without onnxruntime. Counts its calls and batch sizes."""

    def __init__(self, obs_dim: int = 3, act_dim: int = 2, K: int = 4, eval_len: int = 3,
                 low: float = -1.0, high: float = 1.0, default_target_return: float = 10.0,
                 seed: int = 0, reward_offset: float = 0.0):
        from vidt.serving.runtime import PolicyMetadata

        rng = np.random.default_rng(seed)
        self.Wo = rng.normal(0, 0.5, (obs_dim, act_dim)).astype(np.float32)
        self.Wa = rng.normal(0, 0.5, (act_dim, act_dim)).astype(np.float32)
        self.wr = rng.normal(0, 0.05, (act_dim,)).astype(np.float32)
        self.low, self.high = low, high
        self.metadata = PolicyMetadata(
            format_version="1", version="test", algo="vidt", env_id="", model_name="numpy",
            obs_dim=obs_dim, act_dim=act_dim, action_low=(low,) * act_dim,
            action_high=(high,) * act_dim, context_len=K, eval_context_len=eval_len,
            default_target_return=default_target_return, reward_scale=1.0,
            max_episode_steps=0, model_version="numpy", reward_offset=reward_offset)
        self.provider = "numpy"
        self.batch_sizes: list[int] = []

    def predict(self, inputs) -> np.ndarray:
        h = (inputs.observations @ self.Wo + inputs.actions @ self.Wa
             + inputs.returns_to_go[..., None] * self.wr)  # (B, K, A)
        z = (h * inputs.mask[..., None]).sum(axis=1)  # (B, A)
        self.batch_sizes.append(int(z.shape[0]))
        mid, half = (self.high + self.low) / 2, (self.high - self.low) / 2
        return (mid + half * np.tanh(z)).astype(np.float32)

    def infer(self, windows) -> np.ndarray:
        from vidt.window import WindowInputs

        return self.predict(WindowInputs.stack(list(windows)))

    def reference_episode(self, observations, rewards, target_return=None) -> np.ndarray:
        """Actions of one episode computed locally with a ContextWindow: what a server must
        answer for the same observations and rewards."""
        w = self.metadata.new_window(target_return)
        out = []
        for obs, r in zip(observations, rewards):
            a = self.predict(w.observe(obs, r))[0]
            w.record_action(a)
            out.append(a)
        return np.stack(out)


def self_signed_cert(directory: Path) -> tuple[Path, Path] | None:
    """A fresh self-signed certificate for localhost / 127.0.0.1: (cert, key) PEM paths, made
    with `cryptography` if importable, else the `openssl` command; None if neither exists."""
    import shutil
    import subprocess

    cert, key = Path(directory) / "server.crt", Path(directory) / "server.key"
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            return None
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True, timeout=30)
        return cert, key
    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    crt = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
           .public_key(pkey.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - datetime.timedelta(minutes=5))
           .not_valid_after(now + datetime.timedelta(days=1))
           .add_extension(x509.SubjectAlternativeName(
               [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
               critical=False)
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .sign(pkey, hashes.SHA256()))
    cert.write_bytes(crt.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(pkey.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return cert, key


def health_status(address: str, service: str = "", credentials=None) -> str:
    """grpc.health.v1 Check over a fresh channel: 'SERVING', 'NOT_SERVING', ..."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = (grpc.secure_channel(address, credentials) if credentials
               else grpc.insecure_channel(address))
    with channel:
        r = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
