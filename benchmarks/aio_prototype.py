"""A measurement prototype, not the product: what an asyncio gRPC server (grpc.aio) would give
`vidt serve` under many concurrent sessions. It led to `vidt serve --transport asyncio`
(serving/aio.py); it stays for its asyncio echo (the ceiling for that transport) and as the
bare bound beside the real thing.

    python benchmarks/aio_prototype.py echo PORT --obs-dim 11 --act-dim 3
    python benchmarks/aio_prototype.py batched PORT --model policy.onnx

echo: the echo server of serve_roles.py on grpc.aio (is the ceiling the same?). batched: one
event loop; each Act steps a copy of its session's window and awaits a future; windows that
arrive while onnxruntime runs (in one worker thread, which releases the GIL) form the next
batch. No thread per call, so no GIL hand-off per waiting caller, the cost that the threaded
server pays under load (benchmarks/RESULTS.md, "Serving throughput"). It leaves out what the
real server does beyond that (retries of a step, ordering and input checks, resumes, health,
auth, draining, most metrics), so it is an optimistic bound for that design.
`serve_latency.py --aio-prototype` runs both beside the real server.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from vidt.serving.server import message_limits
from vidt.v1 import policy_pb2 as pb
from vidt.v1 import policy_pb2_grpc as pb_grpc


def echo_servicer(obs_dim: int, act_dim: int):
    action = [0.0] * act_dim

    class Echo(pb_grpc.PolicyServiceServicer):
        async def GetPolicyInfo(self, request, context):
            return pb.PolicyInfo(model_version="echo", observation_dim=obs_dim,
                                 action_dim=act_dim)

        async def CreateSession(self, request, context):
            return pb.CreateSessionResponse(session_id="echo")

        async def CloseSession(self, request, context):
            return pb.CloseSessionResponse()

        async def Act(self, request, context):
            return pb.ActResponse(session_id=request.session_id, step=request.step,
                                  action=action, return_to_go=0.0)

    return Echo()


def batched_servicer(model: str, max_batch: int = 64):
    from vidt.serving.metrics import Metrics
    from vidt.serving.runtime import OnnxPolicy
    from vidt.window import WindowInputs

    policy = OnnxPolicy(model, provider="cpu", intra_op_threads=1)
    m = policy.metadata
    low, high = (np.asarray(b, np.float32) for b in (m.action_low, m.action_high))
    metrics = Metrics()
    latency, ok = metrics.act_latency.labels("Act"), metrics.requests.labels("Act", "OK")
    onnx = ThreadPoolExecutor(1, thread_name_prefix="onnxruntime")
    windows: dict = {}
    queue: list = []
    running = [False]

    async def infer(inputs):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        queue.append((inputs, fut))
        if not running[0]:
            running[0] = True
            loop.create_task(drain())
        return await fut

    async def drain():
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)  # the calls already received join the first batch
        while queue:
            batch = queue[:max_batch]
            del queue[:max_batch]
            inputs = batch[0][0] if len(batch) == 1 else WindowInputs.stack([b[0] for b in batch])
            out = await loop.run_in_executor(onnx, policy.predict, inputs)
            out = np.minimum(np.maximum(out, low), high)
            metrics.batch_size.observe(len(batch))
            for i, (_, fut) in enumerate(batch):
                fut.set_result(out[i])
        running[0] = False

    class Batched(pb_grpc.PolicyServiceServicer):
        async def GetPolicyInfo(self, request, context):
            return pb.PolicyInfo(model_version=m.model_version, observation_dim=m.obs_dim,
                                 action_dim=m.act_dim, context_length=m.context_len)

        async def CreateSession(self, request, context):
            sid = secrets.token_hex(8)
            windows[sid] = m.new_window()
            return pb.CreateSessionResponse(session_id=sid,
                                            target_return=m.default_target_return,
                                            context_length=m.context_len, idle_timeout_s=300)

        async def CloseSession(self, request, context):
            windows.pop(request.session_id, None)
            return pb.CloseSessionResponse()

        async def Act(self, request, context):
            t0 = time.perf_counter()
            w = windows[request.session_id].copy()
            obs = np.fromiter(request.observation, np.float32, len(request.observation))
            if not np.isfinite(obs).all():
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "observation not finite")
            action = await infer(w.observe(obs, request.reward))
            w.record_action(action)
            windows[request.session_id] = w
            answer = pb.ActResponse(session_id=request.session_id, step=request.step,
                                    action=action.tolist(), return_to_go=w.return_to_go)
            latency.observe(time.perf_counter() - t0)
            ok.inc()
            return answer

    return Batched(), m


async def serve(servicer, port: int, obs_dim: int, act_dim: int) -> None:
    recv, send = message_limits(obs_dim, act_dim, 1024)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0),
                                      ("grpc.max_receive_message_length", recv),
                                      ("grpc.max_send_message_length", send)])
    pb_grpc.add_PolicyServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["echo", "batched"])
    ap.add_argument("port", type=int)
    ap.add_argument("--model")
    ap.add_argument("--obs-dim", type=int, default=11)
    ap.add_argument("--act-dim", type=int, default=3)
    a = ap.parse_args()
    if a.kind == "echo":
        asyncio.run(serve(echo_servicer(a.obs_dim, a.act_dim), a.port, a.obs_dim, a.act_dim))
    else:
        if not a.model:
            ap.error("batched needs --model")
        servicer, m = batched_servicer(a.model)
        asyncio.run(serve(servicer, a.port, m.obs_dim, m.act_dim))


if __name__ == "__main__":
    main()
