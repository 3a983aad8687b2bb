"""``tfyarn bench transport``: throughput and latency of every transport, with baselines.

Every measurement runs between two processes on this host (a *server* and a *driver*
child, started here), for each message size:

* ``one-way``: the driver sends ``reps`` messages, the server acknowledges the last;
  GB/s = bytes sent / time.
* ``round-trip``: the driver sends one message, the server echoes it, ``reps`` times;
  latency = time per round trip, GB/s counts both directions.

Backends: tfyarn's ``tcp``, ``grpc``, the same two over TLS with a per-job certificate
(``tcp+tls``, ``grpc+tls``) and (when built) ``ucx`` over shared memory and over tcp; every
tfyarn frame carries its authentication tag (HMAC-SHA256), so ``raw-socket`` against
``tcp`` shows what framing and tags cost; baselines measured in the same run: ``memcpy``
of the same size (NumPy, one process), ``raw-socket`` (plain TCP loopback, ``recv_into``
a reused buffer), ``naive-grpc`` (grpcio unary calls with ``bytes``, limits lifted),
``ucx_perftest`` (``tag_bw``/``tag_lat`` over shared memory, where installed) and
``tf-grpc`` (TensorFlow's own runtime: a float32 tensor placed on a remote
``tf.distribute.Server`` task is pulled to the local task, one-way only).

The report (``transport.json``, ``transport.md``, ``transport.png`` under ``--out``) ends
with the target ratios at 64 MiB (or the largest size measured).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_OUT, Row, format_size, parse_size, write_report

__all__ = ["BACKENDS", "add_arguments", "main", "run"]

DEFAULT_SIZES = ("4K", "64K", "1M", "16M", "64M", "256M")
#: Everything measured, in report order.
BACKENDS = (
    "memcpy",
    "raw-socket",
    "naive-grpc",
    "tcp",
    "tcp+tls",
    "grpc",
    "grpc+tls",
    "ucx-shm",
    "ucx-tcp",
    "ucx_perftest",
    "tf-grpc",
)
SHM_TLS = "posix,sysv,cma,self"
#: Bytes to move per measurement (reps adapt to the size; at least MIN_REPS).
ONE_WAY_BYTES = 256 << 20
ROUND_TRIP_BYTES = 64 << 20
#: Timed runs per measurement; the fastest is reported (the machine is shared).
TRIALS = 3
MIN_REPS, MAX_REPS = 3, 2000
_CTRL = struct.Struct("<QQQ")  # op, size, reps
_QUIT, _SINK, _ECHO = 0, 1, 2
_SECRET_ENV = "TFYARN_BENCH_SECRET"
_TLS_ENV = "TFYARN_BENCH_TLS"  # the certificate file of the +tls backends
_REPO = Path(__file__).resolve().parent.parent


def reps_for(size: int, mode: str, scale: float = 1.0) -> int:
    """Timed repetitions for one measurement: enough bytes to be stable, bounded."""
    target = (ONE_WAY_BYTES if mode == "one-way" else ROUND_TRIP_BYTES) * scale
    return int(max(MIN_REPS, min(MAX_REPS, target // size)))


# --------------------------------------------------------------------------------------
# Children: a server and a driver per backend.
# --------------------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < view.nbytes:
        n = sock.recv_into(view[got:])
        if not n:
            raise ConnectionError("peer closed")
        got += n


def _serve_raw(sock: socket.socket) -> None:
    """Plain TCP: the control header, then exactly ``size`` bytes per message."""
    conn, _ = sock.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ctrl = memoryview(bytearray(_CTRL.size))
    buf = memoryview(bytearray(0))
    while True:
        _recv_exact(conn, ctrl)
        op, size, reps = _CTRL.unpack(ctrl)
        if op == _QUIT:
            return
        if buf.nbytes < size:
            buf = memoryview(bytearray(size))
        for _ in range(reps):
            _recv_exact(conn, buf[:size])
            if op == _ECHO:
                conn.sendall(buf[:size])
        if op == _SINK:
            conn.sendall(b"k")


def _tls_options() -> Any:
    """TransportOptions with the run's certificate (``tcp+tls``, ``grpc+tls``), else None."""
    from tfyarn.transport.options import TransportOptions
    from tfyarn.transport.tls import JobCertificate

    path = os.environ.get(_TLS_ENV)
    if not path:
        return None
    return JobCertificate.from_pem(Path(path).read_bytes()).apply(TransportOptions())


def _serve_tfyarn(address: str) -> None:
    from tfyarn.transport import listen
    from tfyarn.transport.memory import alloc_buffer

    secret = bytes.fromhex(os.environ[_SECRET_ENV])
    with listen(address, secret=secret, options=_tls_options()) as lis:
        print(f"READY {lis.address}", flush=True)
        comm = lis.accept(timeout=120)
        ctrl = bytearray(_CTRL.size)
        buf = memoryview(bytearray(0))
        while True:
            comm.recv_into(ctrl)
            op, size, reps = _CTRL.unpack(ctrl)
            if op == _QUIT:
                comm.close()
                return
            if buf.nbytes < size:
                buf = memoryview(alloc_buffer(size)).cast("B")
            for _ in range(reps):
                n = comm.recv_into(buf)
                if op == _ECHO:
                    comm.send(buf[:n])
            if op == _SINK:
                comm.send(b"k")


def _serve_naive_grpc() -> None:
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    opts = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    server = grpc.server(ThreadPoolExecutor(max_workers=2), options=opts)
    handlers = {
        "Sink": grpc.unary_unary_rpc_method_handler(lambda req, ctx: b""),
        "Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"READY 127.0.0.1:{port}", flush=True)
    sys.stdin.read()
    server.stop(None)


def _serve_tf(port: int) -> None:
    import tensorflow as tf

    cluster = tf.train.ClusterSpec({"b": [f"127.0.0.1:{port}"]})
    server = tf.distribute.Server(cluster, job_name="b", task_index=0, start=True)
    print(f"READY 127.0.0.1:{port}", flush=True)
    sys.stdin.read()
    del server


def server_main(kind: str, arg: str) -> None:
    """Entry of a server child; prints ``READY <address>`` then serves until told to stop."""
    if kind == "raw-socket":
        with socket.create_server(("127.0.0.1", 0)) as sock:
            print(f"READY 127.0.0.1:{sock.getsockname()[1]}", flush=True)
            _serve_raw(sock)
    elif kind == "naive-grpc":
        _serve_naive_grpc()
    elif kind == "tf-grpc":
        _serve_tf(int(arg))
    else:
        _serve_tfyarn(arg)


def warm_for(size: int, reps: int) -> int:
    """Untimed repetitions first: at least 2, about 32 MiB, at most ``reps``.

    Enough for TCP windows, gRPC's flow-control probing and page faults to settle.
    """
    return max(2, min(reps, (32 << 20) // size))


def timed(kind: str, mode: str, size: int, reps: int, run: Callable[[int], None]) -> Row:
    """Warm up, then time ``TRIALS`` runs of ``run(reps)``; keep the fastest.

    The machine is shared, so the best of a few trials is the most stable estimate of
    what the transport can do; every trial's seconds go into ``extra``.
    """
    run(warm_for(size, reps))
    trials = []
    for _ in range(TRIALS):
        t0 = time.perf_counter()
        run(reps)
        trials.append(time.perf_counter() - t0)
    return Row.measured(kind, mode, size, reps, min(trials), trials=trials)


def _drive_stream(kind: str, address: str, sizes: Sequence[int], scale: float) -> list[Row]:
    """Driver for raw-socket and the tfyarn backends (same control protocol)."""
    import numpy as np

    rows: list[Row] = []
    if kind == "raw-socket":
        host, port = address.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=60)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def ctrl(op: int, size: int, reps: int) -> None:
            sock.sendall(_CTRL.pack(op, size, reps))

        def send(view: memoryview) -> None:
            sock.sendall(view)

        def recv(view: memoryview) -> None:
            _recv_exact(sock, view)

        def close() -> None:
            sock.close()
    else:
        from tfyarn.transport import connect

        comm = connect(
            address,
            secret=bytes.fromhex(os.environ[_SECRET_ENV]),
            timeout=60,
            options=_tls_options(),
        )

        def ctrl(op: int, size: int, reps: int) -> None:
            comm.send(_CTRL.pack(op, size, reps))

        def send(view: memoryview) -> None:
            comm.send(view)

        def recv(view: memoryview) -> None:
            comm.recv_into(view)

        def close() -> None:
            comm.close()

    ack = memoryview(bytearray(1))
    for size in sizes:
        data = memoryview(np.random.default_rng(size).integers(0, 255, size, np.uint8)).cast("B")
        back = memoryview(bytearray(size))
        for mode, op in (("one-way", _SINK), ("round-trip", _ECHO)):

            def run(
                n: int, op: int = op, size: int = size, data: Any = data, back: Any = back
            ) -> None:
                ctrl(op, size, n)
                for _ in range(n):
                    send(data)
                    if op == _ECHO:
                        recv(back)
                if op == _SINK:
                    recv(ack)

            rows.append(timed(kind, mode, size, reps_for(size, mode, scale), run))
            if op == _ECHO and bytes(back[-64:]) != bytes(data[-64:]):
                raise RuntimeError(f"{kind}: echo corrupted the data")
    ctrl(_QUIT, 0, 0)
    close()
    return rows


def _drive_naive_grpc(address: str, sizes: Sequence[int], scale: float) -> list[Row]:
    import grpc

    opts = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    channel = grpc.insecure_channel(address, options=opts)
    grpc.channel_ready_future(channel).result(timeout=60)
    sink = channel.unary_unary("/bench/Sink")
    echo = channel.unary_unary("/bench/Echo")
    rows = []
    for size in sizes:
        data = os.urandom(size)
        for mode, call in (("one-way", sink), ("round-trip", echo)):

            def run(n: int, call: Any = call, data: bytes = data) -> None:
                for _ in range(n):
                    call(data)

            rows.append(timed("naive-grpc", mode, size, reps_for(size, mode, scale), run))
    channel.close()
    return rows


def _drive_tf(address: str, sizes: Sequence[int], scale: float) -> list[Row]:
    import tensorflow as tf

    tf.config.experimental_connect_to_host(address, job_name="b")
    remote = "/job:b/replica:0/task:0/device:CPU:0"
    local = "/job:localhost/replica:0/task:0/device:CPU:0"
    rows = []
    for size in sizes:
        n = max(1, size // 4)
        with tf.device(remote):
            x = tf.Variable(tf.ones([n], tf.float32))

        @tf.function
        def pull(x: tf.Variable = x, last: int = n - 1) -> tf.Tensor:
            with tf.device(local):
                # The identity on the local task makes the runtime move the whole tensor;
                # taking one element afterwards keeps local compute out of the timing.
                return tf.identity(x.read_value())[last]

        def run(reps: int, pull: Any = pull) -> None:
            for _ in range(reps):
                if pull().numpy() != 1.0:
                    raise RuntimeError("tf-grpc: pulled tensor has wrong contents")

        rows.append(timed("tf-grpc", "one-way", n * 4, reps_for(n * 4, "one-way", scale), run))
        del x
    return rows


def _drive_memcpy(sizes: Sequence[int], scale: float) -> list[Row]:
    import numpy as np

    rows = []
    for size in sizes:
        src = np.random.default_rng(size).integers(0, 255, size, np.uint8)
        dst = np.empty_like(src)

        def run(reps: int, src: Any = src, dst: Any = dst) -> None:
            for _ in range(reps):
                np.copyto(dst, src)

        rows.append(timed("memcpy", "one-way", size, reps_for(size, "one-way", scale), run))
    return rows


def driver_main(kind: str, address: str, sizes: Sequence[int], scale: float) -> None:
    """Entry of a driver child: measure, print one JSON line of rows."""
    if kind == "memcpy":
        rows = _drive_memcpy(sizes, scale)
    elif kind == "naive-grpc":
        rows = _drive_naive_grpc(address, sizes, scale)
    elif kind == "tf-grpc":
        rows = _drive_tf(address, sizes, scale)
    else:
        rows = _drive_stream(kind, address, sizes, scale)
    print("ROWS " + json.dumps([r.__dict__ for r in rows]), flush=True)


# --------------------------------------------------------------------------------------
# Orchestration (the parent process).
# --------------------------------------------------------------------------------------


def _child(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.transport_bench", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=_REPO,
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(15)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(15)
    for pipe in (proc.stdout, proc.stderr):
        if pipe:
            pipe.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH", "")]))
    env.setdefault(_SECRET_ENV, os.urandom(32).hex())
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra or {})
    return env


def measure_backend(
    kind: str, sizes: Sequence[int], scale: float, timeout: float
) -> tuple[list[Row], str]:
    """Run one backend's server and driver children; return the rows (or why none)."""
    if kind == "ucx_perftest":
        return measure_ucx_perftest(sizes, scale, timeout)
    extra: dict[str, str] = {}
    server_arg = "127.0.0.1:0"
    if kind in ("tcp", "grpc"):
        server_arg = f"{kind}://127.0.0.1:0"
    elif kind in ("tcp+tls", "grpc+tls"):
        server_arg = f"{kind.removesuffix('+tls')}://127.0.0.1:0"
        extra[_TLS_ENV] = _certificate_file()
    elif kind.startswith("ucx-"):
        why = _ucx_missing()
        if why:
            return [], why
        server_arg = "ucx://127.0.0.1:0"
        extra["UCX_TLS"] = SHM_TLS if kind == "ucx-shm" else "tcp,self"
    elif kind == "tf-grpc":
        server_arg = str(_free_port())
    env = _env(extra)
    sizes_arg = ",".join(str(s) for s in sizes)
    server = None
    if kind != "memcpy":
        server = _child(["serve", kind, server_arg], env)
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("READY"):
            _stop(server)
            err = server.stderr.read()[-2000:] if server.stderr else ""
            return [], f"server did not start: {line.strip()} {err}"
        address = line.split()[1]
    else:
        address = "-"
    driver = _child(["drive", kind, address, sizes_arg, str(scale)], env)
    try:
        out, err = driver.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        driver.kill()
        out, err = driver.communicate()
        err = f"timed out after {timeout} s\n{err}"
    finally:
        if server is not None:
            _stop(server)
    for line in out.splitlines():
        if line.startswith("ROWS "):
            return [Row(**r) for r in json.loads(line[5:])], ""
    return [], f"driver failed (exit {driver.returncode}): {err.strip()[-2000:]}"


def _certificate_file() -> str:
    """A per-run certificate and key (as a job's), in a private file both children read."""
    import atexit
    import tempfile

    from tfyarn.transport.tls import new_job_certificate

    made = new_job_certificate()
    fd, path = tempfile.mkstemp(prefix="tfyarn-bench-tls-", suffix=".pem")
    with os.fdopen(fd, "wb") as f:
        f.write(made.to_pem())
    atexit.register(lambda: Path(path).unlink(missing_ok=True))
    return path


def _ucx_missing() -> str:
    """Why the tfyarn ucx backend cannot run here, or ''."""
    try:
        from tfyarn import native

        if not native.HAVE_UCX:
            return "tfyarn.native was built without UCX"
        import tfyarn.transport.ucx  # noqa: F401 - only checking it exists
    except ImportError as exc:
        return f"ucx backend not available: {exc}"
    return ""


def _perftest_final(output: str) -> tuple[float, float] | None:
    """(average latency us, overall MB/s) from ucx_perftest's 'Final:' line."""
    for line in output.splitlines():
        if line.startswith("Final:"):
            f = line.split()
            return float(f[3]), float(f[6])
    return None


def measure_ucx_perftest(
    sizes: Sequence[int], scale: float, timeout: float
) -> tuple[list[Row], str]:
    """UCX's own tag_bw (one-way) and tag_lat (round trip) over shared memory."""
    exe = shutil.which("ucx_perftest")
    if exe is None:
        return [], "ucx_perftest is not installed (Debian package ucx-utils)"
    env = _env({"UCX_TLS": SHM_TLS})
    rows: list[Row] = []
    for size in sizes:
        for mode, test in (("one-way", "tag_bw"), ("round-trip", "tag_lat")):
            reps = reps_for(size, mode, scale)
            port = _free_port()
            server = subprocess.Popen(
                [exe, "-p", str(port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                time.sleep(0.3)  # let the server bind; the client retries a refused connect
                done = subprocess.run(
                    [
                        exe,
                        "127.0.0.1",
                        "-p",
                        str(port),
                        "-t",
                        test,
                        "-s",
                        str(size),
                        "-n",
                        str(reps),
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                )
            finally:
                if server.poll() is None:
                    server.kill()
                server.wait(10)
            final = _perftest_final(done.stdout)
            if final is None:
                return rows, f"ucx_perftest failed: {done.stdout[-500:]} {done.stderr[-500:]}"
            lat_us, mbps = final
            if mode == "one-way":
                seconds = size * reps / (mbps * (1 << 20))
            else:
                seconds = lat_us * 2 * reps / 1e6  # tag_lat reports half a round trip
            rows.append(Row.measured("ucx_perftest", mode, size, reps, seconds, test=test))
    return rows, ""


def _at(rows: Sequence[Row], backend: str, size: int, mode: str = "one-way") -> float | None:
    for r in rows:
        if (r.backend, r.size, r.mode) == (backend, size, mode):
            return r.gbps
    return None


def target_ratios(rows: Sequence[Row], size: int) -> list[tuple[str, str, float | None, float]]:
    """The issue's targets at ``size`` (one-way GB/s): (what, compared, ratio, target)."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    transports = ("tcp", "grpc", "ucx-shm", "ucx-tcp")
    best = max(
        ((b, _at(rows, b, size)) for b in transports if _at(rows, b, size) is not None),
        key=lambda p: p[1] or 0.0,
        default=(None, None),
    )
    return [
        (
            "shared-memory path vs memcpy",
            "ucx-shm / memcpy",
            ratio(_at(rows, "ucx-shm", size), _at(rows, "memcpy", size)),
            0.5,
        ),
        (
            "tcp backend vs raw socket",
            "tcp / raw-socket",
            ratio(_at(rows, "tcp", size), _at(rows, "raw-socket", size)),
            0.7,
        ),
        (
            "grpc backend vs naive grpcio unary",
            "grpc / naive-grpc",
            ratio(_at(rows, "grpc", size), _at(rows, "naive-grpc", size)),
            3.0,
        ),
        (
            "best transport vs TensorFlow gRPC",
            f"{best[0]} / tf-grpc",
            ratio(best[1], _at(rows, "tf-grpc", size)),
            3.0,
        ),
    ]


def best_rows(rows: Sequence[Row]) -> list[Row]:
    """Keep the fastest row per (backend, mode, size); record every round's GB/s.

    Rounds measure each backend at different moments, so that a burst of load on the
    shared machine does not decide a ratio on its own.
    """
    best: dict[tuple[str, str, int], Row] = {}
    seen: dict[tuple[str, str, int], list[float]] = {}
    for r in rows:
        key = (r.backend, r.mode, r.size)
        seen.setdefault(key, []).append(round(r.gbps, 4))
        if key not in best or r.gbps > best[key].gbps:
            best[key] = r
    for key, r in best.items():
        if len(seen[key]) > 1:
            r.extra = {**r.extra, "rounds_gbps": seen[key]}
    return list(best.values())


def _notes(rows: Sequence[Row], sizes: Sequence[int], skipped: dict[str, str]) -> str:
    size = 64 << 20 if (64 << 20) in sizes else max(sizes)
    lines = [f"Targets at {format_size(size)}, one-way throughput, same run:", ""]
    table = ["| target | ratio | measured | goal | met |", "|---|---|---|---|---|"]
    for what, compared, value, goal in target_ratios(rows, size):
        shown = f"{value:.2f}x" if value is not None else "not measured"
        met = "yes" if value is not None and value >= goal else "no"
        table.append(f"| {what} | {compared} | {shown} | >= {goal}x | {met} |")
    lines += table
    if skipped:
        lines += ["", "Not measured:", ""]
        lines += [f"- {k}: {v}" for k, v in skipped.items()]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``tfyarn bench transport``."""
    parser.add_argument(
        "--sizes",
        default=",".join(DEFAULT_SIZES),
        help=f"comma-separated message sizes (default {','.join(DEFAULT_SIZES)})",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated subset of {','.join(BACKENDS)}",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help="output directory (default results/)")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply the bytes moved per measurement (0.25 for a quick run)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per backend")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every backend this many times, interleaved, and keep the best "
        "(steadier ratios on a busy machine)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args``; write the report; return 0."""
    from tfyarn.errors import ConfigError

    try:
        sizes = sorted({parse_size(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown or not sizes or args.scale <= 0:
        raise ConfigError(
            f"bad arguments: unknown backends {unknown} (known: {', '.join(BACKENDS)}), "
            f"sizes {args.sizes!r}, scale {args.scale}"
        )
    if args.rounds < 1:
        raise ConfigError(f"--rounds must be >= 1, got {args.rounds}")
    measured: list[Row] = []
    skipped: dict[str, str] = {}
    for round_no in range(1, args.rounds + 1):
        for kind in BACKENDS:
            if kind not in backends or kind in skipped:
                continue
            t0 = time.perf_counter()
            got, why = measure_backend(kind, sizes, args.scale, args.timeout)
            measured += got
            if why:
                skipped[kind] = why
            status = f"{len(got)} rows" + (f", {why.splitlines()[0][:120]}" if why else "")
            elapsed = time.perf_counter() - t0
            print(f"[{round_no}/{args.rounds}] {kind:>13}: {status} ({elapsed:.1f} s)", flush=True)
    rows = best_rows(measured)
    notes = _notes(rows, sizes, skipped)
    paths = write_report(
        args.out,
        "transport",
        "tfyarn transport benchmark",
        rows,
        {
            "sizes": sizes,
            "backends": backends,
            "scale": args.scale,
            "rounds": args.rounds,
            "skipped": skipped,
        },
        notes,
    )
    print(notes)
    for kind, path in paths.items():
        if path is not None:
            print(f"{kind}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.transport_bench``: the CLI, or a child role."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        server_main(argv[1], argv[2])
        return 0
    if argv[:1] == ["drive"]:
        sizes = [int(s) for s in argv[3].split(",")]
        driver_main(argv[1], argv[2], sizes, float(argv[4]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.transport_bench")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
