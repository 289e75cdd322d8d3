"""The processes benchmarks/serve_latency.py starts beside `vidt serve`, one role each:

    python benchmarks/serve_roles.py echo-server PORT [--obs-dim 11 --act-dim 3 --threads 64]
                                               [--transport threads|asyncio]
    python benchmarks/serve_roles.py zero-server PORT --model policy.onnx [--threads 64]
    python benchmarks/serve_roles.py load-worker 127.0.0.1:PORT [--sessions 16 --seconds 4]

echo-server: a PolicyService whose Act returns a constant (grpc's own cost with vidt's server
settings); zero-server: `vidt serve`'s server with the model replaced by zeros (what the
session logic, batcher and servicer cost); load-worker: threads stepping sessions as fast as
answers come back, printing one JSON line of steps and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def run_echo_server(port: int, obs_dim: int, act_dim: int, threads: int,
                    transport: str = "threads") -> None:
    """A PolicyService whose Act returns a constant: grpc's cost with vidt's server settings,
    on grpc's synchronous server (threads) or on grpc.aio (asyncio)."""
    import asyncio

    import grpc

    from vidt.serving.server import message_limits
    from vidt.v1 import policy_pb2 as pb
    from vidt.v1 import policy_pb2_grpc as pb_grpc

    action = [0.0] * act_dim
    answers = {  # method -> (request -> response)
        "GetPolicyInfo": lambda r: pb.PolicyInfo(model_version="echo", observation_dim=obs_dim,
                                                 action_dim=act_dim),  # once per channel
        "CreateSession": lambda r: pb.CreateSessionResponse(session_id="echo"),
        "CloseSession": lambda r: pb.CloseSessionResponse(),
        "Act": lambda r: pb.ActResponse(session_id=r.session_id, step=r.step, action=action,
                                        return_to_go=0.0),
    }
    if transport == "asyncio":
        def unary(answer):
            async def call(request, context):
                return answer(request)
            return call

        async def stream(request_iterator, context):
            async for r in request_iterator:
                yield answers["Act"](r)
    else:
        def unary(answer):
            return lambda request, context: answer(request)

        def stream(request_iterator, context):
            for r in request_iterator:
                yield answers["Act"](r)

    handlers = type("Echo", (), {k: staticmethod(unary(f)) for k, f in answers.items()})
    handlers.ActBatch, handlers.ActStream = staticmethod(unary(None)), staticmethod(stream)
    recv, send = message_limits(obs_dim, act_dim, 1024)
    options = [("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", recv),
               ("grpc.max_send_message_length", send)]
    if transport == "asyncio":
        async def serve():
            server = grpc.aio.server(options=options)
            pb_grpc.add_PolicyServiceServicer_to_server(handlers, server)
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            print("ready", flush=True)
            await server.wait_for_termination()

        asyncio.run(serve())
        return
    server = grpc.server(ThreadPoolExecutor(max_workers=threads), options=options)
    pb_grpc.add_PolicyServiceServicer_to_server(handlers, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def run_zero_server(port: int, model: str, threads: int) -> None:
    """`vidt serve`'s server with its policy's predict replaced by zeros: what the session
    logic, the batcher and the servicer cost without onnxruntime."""
    import signal

    from vidt.serving.runtime import OnnxPolicy
    from vidt.serving.server import PolicyServer, ServerConfig

    class ZeroModel:
        def __init__(self, policy):
            self.metadata, self.provider = policy.metadata, "none (zeros)"

        def predict(self, inputs):
            return np.zeros((inputs.observations.shape[0], self.metadata.act_dim), np.float32)

    server = PolicyServer(ZeroModel(OnnxPolicy(model, provider="cpu")),
                          ServerConfig(port=port, threads=threads))
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.wait()


def run_load_worker(address: str, sessions: int, seconds: float, obs_dim: int) -> None:
    """`sessions` threads, one session each, stepping as fast as answers come back."""
    from vidt.serving.client import PolicyClient

    rng = np.random.default_rng(os.getpid())
    obs = rng.normal(size=(64, obs_dim)).astype(np.float32)
    counts = [0] * sessions
    start = threading.Barrier(sessions + 1)
    stop_at = [0.0]
    with PolicyClient(address, timeout_s=30) as c:
        def loop(k):
            try:
                with c.session() as s:
                    start.wait()
                    while time.perf_counter() < stop_at[0]:
                        s.act(obs[s.step % 64], 0.1)
                        counts[k] += 1
            except BaseException:
                start.abort()  # the others must not wait for this one forever
                raise

        threads = [threading.Thread(target=loop, args=(k,)) for k in range(sessions)]
        for t in threads:
            t.start()
        stop_at[0] = time.perf_counter() + 1e9
        start.wait()
        t0 = time.perf_counter()
        time.sleep(1.0)  # warm-up: counts reset after it
        base = sum(counts)
        t1 = time.perf_counter()
        stop_at[0] = t1 + seconds
        for t in threads:
            t.join()
        t2 = time.perf_counter()
    print(json.dumps({"steps": sum(counts) - base, "seconds": t2 - t1, "warmup_s": t1 - t0}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="role", required=True)
    echo = sub.add_parser("echo-server", help="Act answers a constant")
    echo.add_argument("port", type=int)
    echo.add_argument("--obs-dim", type=int, default=11)
    echo.add_argument("--act-dim", type=int, default=3)
    echo.add_argument("--threads", type=int, default=64)
    echo.add_argument("--transport", choices=["threads", "asyncio"], default="threads")
    zero = sub.add_parser("zero-server", help="vidt's server with a zero model")
    zero.add_argument("port", type=int)
    zero.add_argument("--model", required=True)
    zero.add_argument("--threads", type=int, default=64)
    load = sub.add_parser("load-worker", help="sessions stepping as fast as they can")
    load.add_argument("address")
    load.add_argument("--sessions", type=int, default=16)
    load.add_argument("--seconds", type=float, default=4.0)
    load.add_argument("--obs-dim", type=int, default=11)
    a = ap.parse_args()
    if a.role == "echo-server":
        run_echo_server(a.port, a.obs_dim, a.act_dim, a.threads, a.transport)
    elif a.role == "zero-server":
        run_zero_server(a.port, a.model, a.threads)
    else:
        run_load_worker(a.address, a.sessions, a.seconds, a.obs_dim)


if __name__ == "__main__":
    main()
