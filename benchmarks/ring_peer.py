"""One rank of ``tfyarn bench links``, run inside its own network namespace.

Usage::

    python -m benchmarks.ring_peer 0 LISTEN_IP SECRET_HEX ELEMENTS REPS COMPRESSIONS STREAM
    python -m benchmarks.ring_peer 1 RANK0_URL SECRET_HEX ELEMENTS REPS COMPRESSIONS STREAM

Rank 0 listens on ``LISTEN_IP`` (any port) and prints ``ADDRESS <url>``; rank 1 connects
to that URL twice, one connection per direction of the two-rank ring (each tagged with one
byte, so that the order of accepts does not matter). Both ranks then

1. time a one-way stream of ``STREAM`` bytes from rank 1 to rank 0 (4 MiB messages, then
   a one-byte acknowledgement): what the link sustains for one tfyarn tcp connection;
2. for each of ``COMPRESSIONS`` (comma-separated, e.g. ``none,fp16,bf16,topk``): one
   warm-up ring all-reduce of ``ELEMENTS`` float32 values, then ``REPS`` timed ones,
   between barriers, counting the payload bytes each rank sent (``topk``: at its default
   density, selection and densifying included).

Each rank prints ``RESULT <json>`` and exits 0; any failure exits non-zero with its
traceback on stderr.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import numpy as np

from tfyarn.exchange.compression import TOPK, wire_dtype
from tfyarn.exchange.ring import Ring
from tfyarn.exchange.stats import CountedComm, ExchangeStats
from tfyarn.exchange.topk import DEFAULT_DENSITY, TopK
from tfyarn.transport import Comm, Listener, connect, listen

#: Message size of the one-way stream.
STREAM_CHUNK = 4 << 20
#: Seconds to wait for the peer's connections.
CONNECT_TIMEOUT = 60.0


def _ring_comms(rank: int, address: str, secret: bytes) -> tuple[Comm, Comm, Listener | None]:
    """``(right, left, listener)``: we send on ``right`` and receive on ``left``.

    Rank 0's listener owns the comms it accepted: it is closed last, by the caller.
    """
    if rank == 0:
        listener = listen(f"tcp://{address}:0", secret=secret)
        print(f"ADDRESS {listener.address}", flush=True)
        tagged: dict[bytes, Comm] = {}
        for _ in range(2):
            comm = listener.accept(timeout=CONNECT_TIMEOUT)
            tagged[bytes(comm.recv())] = comm
        # rank 1 sends on the one it tagged "R": that is where rank 0 receives
        return tagged[b"L"], tagged[b"R"], listener
    right = connect(address, secret=secret, timeout=CONNECT_TIMEOUT)
    right.send(b"R")
    left = connect(address, secret=secret, timeout=CONNECT_TIMEOUT)
    left.send(b"L")
    return right, left, None


def _stream_seconds(rank: int, right: Comm, left: Comm, nbytes: int) -> float:
    """Rank 1 sends ``nbytes`` to rank 0; the seconds until rank 0 acknowledged them."""
    block = np.zeros(STREAM_CHUNK, np.uint8)
    whole, rest = divmod(nbytes, STREAM_CHUNK)
    sizes = [STREAM_CHUNK] * whole + ([rest] if rest else [])
    start = time.perf_counter()
    if rank == 1:
        for size in sizes:
            right.send(block[:size].data)
        left.recv()
    else:
        for size in sizes:
            if left.recv_into(block[:size].data) != size:
                raise RuntimeError("the stream lost a message")
        right.send(b"k")
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    """Run one rank (see the module docstring); print ``RESULT <json>``."""
    rank, address, secret = int(argv[0]), argv[1], bytes.fromhex(argv[2])
    elements, reps = int(argv[3]), int(argv[4])
    compressions, stream = argv[5].split(","), int(argv[6])
    right, left, listener = _ring_comms(rank, address, secret)
    stats = ExchangeStats()
    ring = Ring(rank, 2, CountedComm(right, stats), CountedComm(left, stats))
    out: dict[str, object] = {"rank": rank, "elements": elements, "reps": reps}
    try:
        ring.barrier()
        out["stream_seconds"] = _stream_seconds(rank, right, left, stream)
        out["stream_bytes"] = stream
        rng = np.random.default_rng(rank)
        grads = rng.standard_normal(elements).astype(np.float32)
        timings = {}
        for name in compressions:
            reduce = _reducer(ring, name)
            buf = grads.copy()
            reduce(buf)  # warm-up: page faults, buffers
            ring.barrier()
            before = stats.figures().bytes_sent
            start = time.perf_counter()
            for _ in range(reps):  # in place: averages of equal buffers stay bounded
                reduce(buf)
            seconds = time.perf_counter() - start
            sent = stats.figures().bytes_sent - before
            ring.barrier()
            timings[name] = {"seconds": seconds / reps, "bytes_sent": sent // reps}
        out["allreduce"] = timings
    finally:
        ring.close()
        if listener is not None:
            listener.close()
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def _reducer(ring: Ring, name: str) -> Callable[[np.ndarray], object]:
    """The averaging all-reduce of one compression, in place on a float32 buffer."""
    if name == TOPK:
        topk = TopK(DEFAULT_DENSITY)
        return lambda buf: topk.allreduce_(ring, buf, "bench", True)
    wire = wire_dtype(name)
    return lambda buf: ring.allreduce_(buf, average=True, wire=wire)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
