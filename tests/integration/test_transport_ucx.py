"""The ucx:// transport between separate processes, over tcp and shared memory.

UCX reads ``UCX_TLS`` once, when a process first uses it, so both ends of every
connection run in child processes started with the configuration's environment; this
file is also the child program (``python test_transport_ucx.py ROLE ...``). Children
report JSON lines on stdout; every wait is bounded.

Configurations: ``UCX_TLS=tcp,self``; ``tcp,self`` with ``UCX_TCP_PUT_ENABLE=n`` (put/get
emulated with active messages served by the peer's progress thread); ``posix,self``
(shared memory, with native put/get lanes), also with callers spinning before they sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest
from leftovers import leaked_shm, shm_entries

SECRET_HEX = "5f" * 32
SIZES = [4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20]
REGION_BYTES = 8 << 20
CONFIGS = {
    "tcp": {"UCX_TLS": "tcp,self"},
    "tcp-emulated-rma": {"UCX_TLS": "tcp,self", "UCX_TCP_PUT_ENABLE": "n"},
    "posix": {"UCX_TLS": "posix,self"},
    # callers drive the worker themselves for 50 us before sleeping (native/README.md)
    "posix-spinning": {"UCX_TLS": "posix,self", "TFYARN_UCX_SPIN_US": "50"},
}
CHILD_TIMEOUT = 120


def pattern(nbytes: int, seed: int) -> np.ndarray:
    """Deterministic bytes both processes can regenerate."""
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)


# ------------------------------------------------------------------ child programs


def _emit(**record: object) -> None:
    print(json.dumps(record), flush=True)


DUPLEX_MESSAGES = 6
DUPLEX_BYTES = 4 << 20


def _duplex(comm, side: int) -> bool:
    """Send on one thread while receiving on another (what a ring all-reduce does)."""
    import threading

    received: list[bool] = []

    def rx() -> None:
        buf = bytearray(DUPLEX_BYTES)
        for i in range(DUPLEX_MESSAGES):
            n = comm.recv_into(buf)
            want = pattern(DUPLEX_BYTES, 1000 + 100 * (1 - side) + i)
            received.append(n == DUPLEX_BYTES and bytes(buf) == want.tobytes())

    t = threading.Thread(target=rx)
    t.start()
    for i in range(DUPLEX_MESSAGES):
        comm.send(pattern(DUPLEX_BYTES, 1000 + 100 * side + i))
    t.join(CHILD_TIMEOUT / 2)
    return not t.is_alive() and received == [True] * DUPLEX_MESSAGES


def server_main() -> None:
    """Listen, expose a region, then serve one good client (a bad one comes first)."""
    from tfyarn import native, transport

    secret = bytes.fromhex(SECRET_HEX)
    pool = native.BufferPool(slab_bytes=32 << 20)
    region = pool.alloc(REGION_BYTES)
    region.as_array(np.uint8)[:] = pattern(REGION_BYTES, 99)
    with transport.listen("ucx://127.0.0.1:0", secret=secret) as lst:
        lst.register("weights", region)
        _emit(address=lst.address)
        comm = lst.accept(timeout=60)
        _emit(accepted=True, transport=comm.transport)
        big = pool.alloc(max(SIZES))
        for i, size in enumerate(SIZES):
            n = comm.recv_into(big)  # posted before (or after) the message arrives
            ok = n == size and np.array_equal(big.as_array(np.uint8, n), pattern(size, i))
            _emit(size=size, received=n, intact=bool(ok))
            comm.send(big.as_array(np.uint8, n))  # echo back from the pool buffer
        # A message larger than the buffer is refused for this peer, the comm survives.
        small = bytearray(10)
        try:
            comm.recv_into(small)
            _emit(too_big="not detected")
        except Exception as exc:
            _emit(too_big=type(exc).__name__)
        comm.send(b"still here")
        _emit(server_duplex=_duplex(comm, 0))
        # put/get phase: wait for the client's "done", check what it wrote.
        done = comm.recv()
        arr = region.as_array(np.uint8)
        head = bytes(arr[:4096]) == bytes(pattern(4096, 7))
        whole = np.array_equal(arr[8192 : 8192 + (4 << 20)], pattern(4 << 20, 8))
        _emit(done=bytes(done).decode(), put_small=head, put_large=whole)
        comm.send(b"checked")
        # The peer's exit must fail our receive promptly, not hang it.
        t0 = time.monotonic()
        try:
            comm.recv()
            _emit(after_exit="received something")
        except Exception as exc:
            _emit(after_exit=type(exc).__name__, seconds=time.monotonic() - t0, msg=str(exc))
        comm.close()
        del arr, done
        big.release()
    region.release()
    pool.close()
    _emit(server="clean exit")


def client_main(address: str, secret_hex: str, crash: bool) -> None:
    from tfyarn import native, transport
    from tfyarn.errors import AuthenticationError

    if secret_hex != SECRET_HEX:  # the intruder
        try:
            transport.connect(address, secret=bytes.fromhex(secret_hex), timeout=20)
            _emit(intruder="accepted!")
        except AuthenticationError as exc:
            _emit(intruder="refused", msg=str(exc))
        return
    comm = transport.connect(address, secret=bytes.fromhex(secret_hex), timeout=20)
    _emit(transport=comm.transport, rma=comm.rma)
    for i, size in enumerate(SIZES):
        data = pattern(size, i)
        t0 = time.perf_counter()
        comm.send(data)
        echo = comm.recv()
        dt = time.perf_counter() - t0
        _emit(
            size=size,
            echoed=bool(np.array_equal(np.frombuffer(echo, np.uint8), data)),
            round_trip_s=dt,
        )
        del echo
    comm.send(b"x" * 100)  # larger than the server's 10-byte buffer
    _emit(after_too_big=bytes(comm.recv()).decode())
    _emit(client_duplex=_duplex(comm, 1))
    # One-sided: write into the server's pool region, read its original content back.
    comm.put(pattern(4096, 7), "weights", 0)
    pool = native.BufferPool(slab_bytes=16 << 20)
    src = pool.alloc(4 << 20)
    src.as_array(np.uint8)[:] = pattern(4 << 20, 8)
    comm.put(src, "weights", 8192)
    tail = REGION_BYTES - (2 << 20)  # the last 2 MiB, which no put touched
    got = pool.alloc(2 << 20)
    n = comm.get(got, "weights", tail)
    tail_ok = np.array_equal(got.as_array(np.uint8), pattern(REGION_BYTES, 99)[tail:])
    head = bytearray(4096)
    comm.get(head, "weights", 0)
    errors = {}
    try:
        comm.get(bytearray(16), "nope", 0)
    except Exception as exc:
        errors["unknown_region"] = type(exc).__name__
    try:
        comm.put(b"x" * 16, "weights", REGION_BYTES - 8)
    except Exception as exc:
        errors["out_of_bounds"] = type(exc).__name__
    _emit(
        get_bytes=n,
        get_tail=bool(tail_ok),
        get_head=bytes(head) == bytes(pattern(4096, 7)),
        **errors,
    )
    comm.send(b"done")
    _emit(checked=bytes(comm.recv()).decode())
    src.release()
    got.release()
    pool.close()
    if crash:
        os._exit(0)  # no close(): the server must notice the process is gone
    comm.close()


ORDER_SIZES = [100, 200, 1 << 20, 2 << 20, 300, 3 << 20]  # eager and rendezvous


def order_server_main() -> None:
    """Receive ORDER_SIZES messages; report the index each one carries, in arrival order."""
    from tfyarn import transport

    with transport.listen("ucx://127.0.0.1:0", secret=bytes.fromhex(SECRET_HEX)) as lst:
        _emit(address=lst.address)
        comm = lst.accept(timeout=60)
        order = []
        for _ in ORDER_SIZES:
            msg = comm.recv()
            index = msg[0]
            intact = bytes(msg) == bytes([index]) * ORDER_SIZES[index]
            order.append(index if intact else -1)
            del msg
        _emit(order=order)
        comm.close()


def order_client_main(address: str) -> None:
    from tfyarn import transport

    comm = transport.connect(address, secret=bytes.fromhex(SECRET_HEX), timeout=20)
    for i, size in enumerate(ORDER_SIZES):
        comm.send(bytes([i]) * size)
    comm.close()


# ------------------------------------------------------------------ the tests


def _spawn(env_extra: dict[str, str], *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, **env_extra)
    env.pop("UCX_NET_DEVICES", None)
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[list[dict], str]:
    try:
        out, err = proc.communicate(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"child did not finish in {CHILD_TIMEOUT} s:\n{out}\n{err}")
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")], err


def _shm_entries() -> set[str]:
    return shm_entries("ucx")


@contextlib.contextmanager
def _server(env: dict[str, str], role: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start a server child; yield it with the address it prints first; never leak it."""
    server = _spawn(env, role)
    try:
        ready, _, _ = select.select([server.stdout], [], [], CHILD_TIMEOUT)
        first = server.stdout.readline() if ready else ""
        if not first.startswith("{"):
            server.kill()
            pytest.fail(f"server did not start: {first}{server.stderr.read()}")
        yield server, json.loads(first)["address"]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def _run_session(env: dict[str, str]) -> tuple[list[dict], list[dict], str, list[dict]]:
    """Server, intruder and client in three processes; returns their reports."""
    with _server(env, "server") as (server, address):
        intruder_out, _ = _finish(_spawn(env, "client", address, "00" * 32, "0"))
        client = _spawn(env, "client", address, SECRET_HEX, "1")
        client_out, client_err = _finish(client)
        server_out, server_err = _finish(server)
    assert client.returncode == 0, client_err
    assert server.returncode == 0, server_err
    return client_out, server_out, server_err, intruder_out


def _check_session(
    client_out: list[dict], server_out: list[dict], server_err: str, intruder_out: list[dict]
) -> dict:
    """Assert everything the children report; return the client's merged record."""
    # A wrong secret is refused, and the listener goes on serving the right one.
    assert len(intruder_out) == 1 and intruder_out[0]["intruder"] == "refused"
    assert "HMAC challenge" in server_err

    echoes = [r for r in client_out if "echoed" in r]
    assert [r["size"] for r in echoes] == SIZES
    assert all(r["echoed"] for r in echoes)
    received = [r for r in server_out if "intact" in r]
    assert [(r["size"], r["received"], r["intact"]) for r in received] == [
        (s, s, True) for s in SIZES
    ]
    rec = {k: v for r in client_out for k, v in r.items() if k != "size"}
    srv = {k: v for r in server_out for k, v in r.items() if k != "size"}
    assert srv["too_big"] == "FrameError"
    assert rec["after_too_big"] == "still here"
    assert rec["client_duplex"] and srv["server_duplex"]
    assert rec["get_bytes"] == 2 << 20 and rec["get_tail"] and rec["get_head"]
    assert rec["unknown_region"] == "TransportError"
    assert rec["out_of_bounds"] == "ValueError"
    assert srv["done"] == "done" and srv["put_small"] and srv["put_large"]
    assert rec["checked"] == "checked"
    # The client exited without closing: the server's receive failed within seconds.
    assert srv["after_exit"] == "TransportError", srv
    assert srv["seconds"] < 15
    assert srv["server"] == "clean exit"
    return rec


@pytest.mark.parametrize("config", list(CONFIGS))
def test_ucx_between_processes(config):
    shm_before = _shm_entries()
    rec = _check_session(*_run_session(CONFIGS[config]))
    expected_tl = "tcp" if config.startswith("tcp") else "posix"
    assert rec["transport"].startswith("ucx/") and expected_tl in rec["transport"]
    if config == "tcp-emulated-rma":
        assert rec["rma"] == "emulated"
    if config.startswith("posix"):
        assert rec["rma"] == "hardware"
    assert not leaked_shm(shm_before, "ucx")  # no shared-memory segment left behind


def test_messages_are_put_back_in_sender_order():
    """The sender, with fault injection, numbers its messages 1, 0, 3, 2, 5, 4: the
    receiver parks each early one (eager or rendezvous) until its turn, so the pairs come
    out swapped, complete and intact, and nothing deadlocks."""
    env = {"UCX_TLS": "tcp,self"}
    with _server(env, "order-server") as (server, address):
        client = _spawn(dict(env, TFYARN_UCX_TEST_SWAP_SEQ="1"), "order-client", address)
        _, client_err = _finish(client)
        server_out, server_err = _finish(server)
    assert client.returncode == 0, client_err
    assert server.returncode == 0, server_err
    assert server_out[-1]["order"] == [1, 0, 3, 2, 5, 4]


@pytest.mark.infiniband
def test_ucx_over_infiniband():
    from tfyarn.transport import rdma

    active = [d.name for d in rdma.list_devices() if any(p.active for p in d.ports)]
    if not active:
        pytest.skip(
            "needs an RDMA device with an ACTIVE port (InfiniBand or RoCE); "
            "tfyarn.transport.rdma.list_devices() found none on this host"
        )
    rec = _check_session(*_run_session({"UCX_TLS": "rc,ud,self"}))
    assert re.search(r"ucx/.*\b(rc|ud)", rec["transport"]), rec["transport"]
    assert rec["rma"] == "hardware"


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "server":
        server_main()
    elif role == "order-server":
        order_server_main()
    elif role == "order-client":
        order_client_main(sys.argv[2])
    else:
        client_main(sys.argv[2], sys.argv[3], sys.argv[4] == "1")
