"""A transport peer run as a separate process by the transport integration tests.

Usage::

    python transport_peer.py serve ADDRESS SECRET_HEX REGION_BYTES [key=value ...]
    python transport_peer.py dial ADDRESS SECRET_HEX [key=value ...]
    python transport_peer.py check ADDRESS SECRET_HEX [key=value ...]
    python transport_peer.py watch ADDRESS SECRET_HEX [key=value ...]

``serve`` listens, prints ``ADDRESS <url>`` on stdout, exposes a region ``"r"`` of
REGION_BYTES bytes (filled with ``i % 251``) and echoes every message of every accepted
comm back to its sender. ``dial`` connects to ADDRESS and echoes likewise. Both stop when
their stdin is closed (so a test that dies takes its peer with it). ``check`` runs
:func:`check` against a ``serve`` peer and prints ``CHECKED <json>``; ``watch`` connects,
then waits in ``recv`` and prints ``LOST <seconds> <error>`` when the connection dies.
Values ``1,2,3`` become tuples of ints. ``key=value`` options
are passed to the backend (values: ints, or strings; ``@file`` reads bytes from a file).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Sequence

from tfyarn.errors import TransportError
from tfyarn.transport import Comm, connect, listen


def _options(args: list[str]) -> dict[str, object]:
    opts: dict[str, object] = {}
    for arg in args:
        key, _, value = arg.partition("=")
        if value.startswith("@"):
            with open(value[1:], "rb") as f:
                opts[key] = f.read()
        elif value.lstrip("-").isdigit():
            opts[key] = int(value)
        elif value and all(v.isdigit() for v in value.split(",")):
            opts[key] = tuple(int(v) for v in value.split(","))
        else:
            opts[key] = value
    return opts


#: Asking the peer for this message makes it answer with :data:`TENSOR` as an array.
SEND_TENSOR = b"send-tensor"


def tensor() -> object:
    """The float32 4x5 array a peer sends when asked with :data:`SEND_TENSOR`."""
    import numpy as np

    return np.arange(20, dtype=np.float32).reshape(4, 5)


def _echo(comm: Comm) -> None:
    """Send back every message until the peer goes away."""
    try:
        while True:
            msg = comm.recv()
            comm.send(tensor() if msg == SEND_TENSOR else msg)
    except TransportError:
        pass
    finally:
        comm.close()


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="peer %(levelname)s %(message)s"
    )
    mode, address, secret = argv[0], argv[1], bytes.fromhex(argv[2])
    if mode == "serve":
        region = bytearray(i % 251 for i in range(int(argv[3])))
        listener = listen(address, secret=secret, **_options(argv[4:]))
        listener.register("r", region)
        print(f"ADDRESS {listener.address}", flush=True)

        def accept_loop() -> None:
            while True:
                try:
                    comm = listener.accept()
                except TransportError:
                    return
                threading.Thread(target=_echo, args=(comm,), daemon=True).start()

        threading.Thread(target=accept_loop, daemon=True).start()
        sys.stdin.read()  # until the test closes our stdin
        listener.close()
        return 0
    if mode == "dial":
        comm = connect(address, secret=secret, **_options(argv[3:]))
        print("CONNECTED", flush=True)
        t = threading.Thread(target=_echo, args=(comm,), daemon=True)
        t.start()
        sys.stdin.read()
        comm.close()
        t.join(5)
        return 0
    if mode == "watch":
        # Block in recv until the connection is declared lost; report how long it took.
        import time

        comm = connect(address, secret=secret, **_options(argv[3:]))  # type: ignore[arg-type]
        comm.send(b"hello")
        comm.recv()
        print("CONNECTED", flush=True)
        t0 = time.monotonic()
        try:
            comm.recv()
            print("RECEIVED", flush=True)
        except TransportError as exc:
            print(f"LOST {time.monotonic() - t0:.1f} {exc}", flush=True)
        comm.close()
        return 0
    if mode == "check":
        print("CHECKED " + json.dumps(check(address, secret, _options(argv[3:]))), flush=True)
        return 0
    print(f"unknown mode {mode!r}", file=sys.stderr)
    return 2


def check(address: str, secret: bytes, options: dict[str, object]) -> dict[str, object]:
    """Exercise a ``serve`` peer at ``address`` from here; return what was observed.

    Used where the test process itself cannot reach the server (another network
    namespace): echo of several sizes, tensor descriptors, put/get and the refusal of a
    wrong secret, each reported as a fact the test asserts on.
    """
    import os

    import numpy as np

    from tfyarn.errors import AuthenticationError

    facts: dict[str, object] = {}
    with connect(address, secret=secret, timeout=20, **options) as comm:  # type: ignore[arg-type]
        facts["transport"] = comm.transport
        echoed = []
        for n in (0, 1, 65536 + 3, 8 << 20):
            payload = os.urandom(n)
            comm.send(payload)
            echoed.append(bytes(comm.recv()) == payload)
        facts["echo_ok"] = echoed
        comm.send(SEND_TENSOR)
        out = np.empty((4, 5), np.float32)
        comm.recv_into(out)
        facts["tensor_ok"] = bool((out == tensor()).all())
        data = os.urandom(300_000)
        comm.put(data, "r", offset=1000)
        back = bytearray(len(data))
        comm.get(back, "r", offset=1000)
        facts["put_get_ok"] = back == data
    try:
        connect(address, secret=b"x" * 32, timeout=20, **options)  # type: ignore[arg-type]
        facts["wrong_secret"] = "accepted"
    except AuthenticationError as exc:
        facts["wrong_secret"] = f"refused: {exc}"
    return facts


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


# --- used by the tests ------------------------------------------------------------------


class Peer:
    """A running peer process; stop() closes its stdin and waits for it (bounded)."""

    def __init__(
        self,
        argv: list[str],
        expect: str,
        timeout: float,
        env: dict | None,
        prefix: Sequence[str] = (),
    ) -> None:
        import os
        import select
        import subprocess

        self.stderr_path = f"/tmp/tfyarn-peer-{os.getpid()}-{id(self)}.log"
        self._stderr = open(self.stderr_path, "w+b")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, __file__, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
        )
        self.address = ""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith(expect):
            self.stop()
            raise RuntimeError(f"peer did not start (got {line!r}): {self.log()}")
        self.address = line.split()[1] if expect == "ADDRESS" else ""

    def next_line(self, timeout: float) -> str:
        """The next line the peer prints on stdout, or '' after ``timeout`` seconds."""
        import select

        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().decode() if ready else ""

    def log(self) -> str:
        """What the peer wrote on stderr so far."""
        self._stderr.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self) -> str:
        """Stop the peer; return its stderr. Idempotent."""
        import contextlib
        import os
        import subprocess

        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        text = self.log()
        if not self._stderr.closed:
            self._stderr.close()
            with contextlib.suppress(OSError):
                os.unlink(self.stderr_path)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()
        return text


def start_server(
    address: str,
    secret: bytes,
    region_bytes: int,
    *opts: str,
    env: dict | None = None,
    prefix: Sequence[str] = (),
) -> Peer:
    """Start a ``serve`` peer (under ``prefix``, e.g. ``ip netns exec NS``); await its address."""
    argv = ["serve", address, secret.hex(), str(region_bytes), *opts]
    return Peer(argv, "ADDRESS", 60, env, prefix)


def start_dialer(
    address: str,
    secret: bytes,
    *opts: str,
    env: dict | None = None,
    prefix: Sequence[str] = (),
    mode: str = "dial",
) -> Peer:
    """Start a ``dial`` (or ``watch``) peer and return it once it is connected."""
    return Peer([mode, address, secret.hex(), *opts], "CONNECTED", 60, env, prefix)
