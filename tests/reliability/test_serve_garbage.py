"""Raw bytes on the server's port: random garbage, HTTP/2 prefaces that stop half way, a TLS
hello to a plaintext port, and idle connections held open. None may crash or wedge the server:
after each, health answers SERVING and an episode still gets the replayed actions, and the
worker threads (a small pool here) still all serve streams."""

from __future__ import annotations

import socket
import struct
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reliability_util import episode, fuzz, replay
from serving_util import health_status, running_server

from vidt.serving.client import PolicyClient

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
THREADS = 4


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(
        ">I", stream) + payload


SETTINGS = frame(0x4, 0, 0)
# HEADERS on stream 1 whose HPACK block is garbage; a frame with an unknown type; a
# WINDOW_UPDATE of 0 (a protocol error); a DATA frame on a stream never opened.
BAD_FRAMES = [frame(0x1, 0x4, 1, b"\xff\xff\xff\xff\x00garbage"), frame(0xee, 0, 3, b"x" * 10),
              frame(0x8, 0, 0, b"\x00\x00\x00\x00"), frame(0x0, 0x1, 7, b"\x00" * 5 + b"abc")]
TLS_HELLO = bytes.fromhex("16030100a5010000a10303") + bytes(32) + bytes.fromhex(
    "000020c02bc02fc02cc030cca9cca8c013c014009c009d002f0035000a01000058")


@pytest.fixture(scope="module")
def server(policy):
    with running_server(policy, threads=THREADS, idle_timeout_s=60) as srv:
        yield srv


@pytest.fixture(scope="module")
def host_port(server):
    return "127.0.0.1", server.port


def send_raw(host_port, data: bytes, *, half_close: bool = True, read: bool = True) -> None:
    """Connect, send, optionally half-close, read what comes back until the server closes
    (or 0.3 s pass): a bounded exchange whatever the server does."""
    with socket.create_connection(host_port, timeout=5) as s:
        s.settimeout(0.3)
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
            for _ in range(100) if read else ():
                if not s.recv(65536):
                    break
        except OSError:  # timeout, reset, or not connected any more after a reset
            pass  # the server may reset a connection it finds broken: that is fine


def serves(server, policy, steps: int = 3, seed: int = 0) -> None:
    assert health_status(server.address, "") == "SERVING"
    assert health_status(server.address, "vidt.v1.PolicyService") == "SERVING"
    obs, rew = episode(seed)
    with PolicyClient(server.address, timeout_s=5, retries=0) as c, c.session() as s:
        got = np.stack([s.act(obs[t], rew[t]) for t in range(steps)])
    np.testing.assert_allclose(got, replay(policy, seed, steps), atol=1e-5)


@fuzz(60)
@given(data=st.one_of(st.binary(max_size=4096),
                      st.binary(max_size=512).map(lambda b: PREFACE + b),
                      st.binary(max_size=512).map(lambda b: PREFACE + SETTINGS + b)),
       half_close=st.booleans())
def test_random_bytes_do_not_hurt(server, policy, host_port, fuzz_counts, data, half_close):
    fuzz_counts["raw bytes on the port"] += 1
    send_raw(host_port, data, half_close=half_close)
    serves(server, policy, steps=1)


@pytest.mark.parametrize("payload", [
    PREFACE, PREFACE[:10], PREFACE + SETTINGS, *[PREFACE + SETTINGS + f for f in BAD_FRAMES],
    TLS_HELLO, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 65536,
], ids=["preface", "half-preface", "preface+settings", "bad-headers", "unknown-frame",
        "zero-window-update", "data-on-idle-stream", "tls-hello", "http1", "64k-zeros"])
@pytest.mark.parametrize("how", ["close", "half-close", "reset"])
def test_broken_http2_connections(server, policy, host_port, fuzz_counts, payload, how):
    fuzz_counts["broken HTTP/2 connection"] += 1
    if how == "reset":  # RST instead of FIN: SO_LINGER 0
        with socket.create_connection(host_port, timeout=5) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            try:
                s.sendall(payload)
            except OSError:
                pass  # the server may have closed first: what counts is that it still serves
    else:
        send_raw(host_port, payload, half_close=how == "half-close", read=how != "close")
    serves(server, policy, steps=2, seed=1)


def test_idle_and_half_open_connections_do_not_take_the_workers(server, policy, host_port,
                                                                fuzz_counts):
    """120 connections that stop after the preface (or half way through it) stay open while
    THREADS streams run whole episodes at once: connections are not worker threads."""
    held = []
    try:
        for i in range(120):
            s = socket.create_connection(host_port, timeout=5)
            s.sendall([PREFACE + SETTINGS, PREFACE[:7], b"\x16\x03\x01"][i % 3])
            if i % 2:
                s.shutdown(socket.SHUT_WR)
            held.append(s)
        fuzz_counts["idle connection held open"] += len(held)
        results, errors = [None] * THREADS, []
        barrier = threading.Barrier(THREADS)

        def run(k):
            try:
                obs, rew = episode(k)
                with PolicyClient(server.address, timeout_s=10, retries=0) as c, \
                        c.stream() as s:
                    barrier.wait(10)  # all THREADS streams open at the same time
                    results[k] = np.stack([s.act(obs[t], rew[t]) for t in range(8)])
            except Exception as e:  # surfaced below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        for k in range(THREADS):
            np.testing.assert_allclose(results[k], replay(policy, k, 8), atol=1e-5)
    finally:
        for s in held:
            s.close()
    serves(server, policy)
