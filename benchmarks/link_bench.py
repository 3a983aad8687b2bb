"""``tfyarn bench links``: the ring all-reduce between two hosts on rate-limited links.

Two network namespaces joined by a veth pair stand for two hosts; ``tc qdisc ... tbf``
limits each end's egress to a link rate (``--rates``, e.g. 1, 10 and 25 Gbit/s; ``none``
leaves the veth unlimited, which shows what this machine itself sustains). For each
rate, one rank process per namespace (:mod:`benchmarks.ring_peer`) measures in the same
run:

(a) the **sustained rate** of one tfyarn tcp connection over the link (a one-way stream);
(b) the **ring all-reduce** of a ``--elements`` float32 gradient (default 25M, a
    ~25M-parameter model) with each ``--compressions`` (``none`` is the baseline,
    ``fp16``/``bf16`` send half types, summing in float32, ``topk`` the largest 1 % with
    error feedback): seconds per all-reduce, bytes each rank sent, and the speed-up over
    ``none`` on the same link.

Needs root (it creates namespaces, veth pairs and qdiscs), ``ip`` and ``tc``; it deletes
everything it made, also on failure. Writes ``links.json``, ``links.md`` and ``links.png``
under ``--out`` and prints the table. Only the exchange is timed, not a training step:
how much of it a step exposes depends on overlap with the backward pass (issue 16).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_OUT, machine_info, markdown_table

__all__ = ["LinkRow", "add_arguments", "main", "parse_rate", "run", "tbf_burst"]

DEFAULT_RATES = ("1gbit", "10gbit", "25gbit", "none")
DEFAULT_COMPRESSIONS = ("none", "fp16", "bf16", "topk")
#: The two hosts' addresses on their /30.
ADDRESSES = ("10.219.9.1", "10.219.9.2")
#: Seconds one rank process may take at one rate.
PEER_TIMEOUT = 600.0
_RATE_UNITS = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bit": 1.0}


def parse_rate(text: str) -> float | None:
    """``"10gbit"`` -> bits per second; ``"none"`` -> None (no limit).

    Raises
    ------
    ValueError
        Not a positive number followed by bit, kbit, mbit or gbit.
    """
    t = text.strip().lower()
    if t == "none":
        return None
    for unit, scale in _RATE_UNITS.items():
        if t.endswith(unit):
            number = t[: -len(unit)]
            try:
                value = float(number)
            except ValueError:
                break
            if value > 0:
                return value * scale
            break
    raise ValueError(f"bad rate {text!r}: use e.g. 1gbit, 500mbit, or none")


def tbf_burst(bits_per_second: float) -> int:
    """tbf's bucket in bytes: 10 ms at the rate, at least 256 KiB.

    A bucket smaller than one kernel tick's worth of bytes (rate / HZ, HZ up to 1000)
    keeps tbf below its rate; 10 ms covers any HZ, and over the seconds an all-reduce
    takes the burst changes the average by well under 1 %.
    """
    return max(256 << 10, int(bits_per_second / 8 * 0.010))


@dataclass(frozen=True)
class LinkRow:
    """One all-reduce measurement at one link rate."""

    rate: str
    compression: str
    elements: int
    seconds: float
    bytes_sent: int
    stream_gbit: float
    speedup: float

    @property
    def algo_gbit(self) -> float:
        """Gradient bits reduced per second (the buffer's size over the time)."""
        return self.elements * 4 * 8 / self.seconds / 1e9


def _run(cmd: Sequence[str]) -> None:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")


@contextlib.contextmanager
def _two_hosts(mtu: int) -> Iterator[tuple[list[str], list[str]]]:
    """Two namespaces linked by a veth pair: ``(namespaces, veth names)``; deleted after."""
    tag = f"{os.getpid() % 100000}"
    names, veths = [f"tfl{tag}a", f"tfl{tag}b"], [f"tfl{tag}x", f"tfl{tag}y"]
    made: list[str] = []
    try:
        for ns in names:
            _run(["ip", "netns", "add", ns])
            made.append(ns)
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(
            [
                "ip",
                "link",
                "add",
                veths[0],
                "netns",
                names[0],
                "type",
                "veth",
                "peer",
                "name",
                veths[1],
                "netns",
                names[1],
            ]
        )
        for ns, veth, addr in zip(names, veths, ADDRESSES, strict=True):
            _run(["ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", veth])
            _run(["ip", "-n", ns, "link", "set", veth, "mtu", str(mtu), "up"])
        yield names, veths
    finally:
        for ns in made:  # deleting a namespace deletes its veth end, and so the pair
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _run(["ip", "netns", "del", ns])


def _limit(names: Sequence[str], veths: Sequence[str], bits: float | None) -> None:
    """Put a tbf of ``bits`` per second on both ends' egress (None: remove it)."""
    for ns, veth in zip(names, veths, strict=True):
        if bits is None:
            with contextlib.suppress(RuntimeError):  # no qdisc of ours: nothing to remove
                _run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", veth, "root"])
            continue
        _run(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "tc",
                "qdisc",
                "replace",
                "dev",
                veth,
                "root",
                "tbf",
                "rate",
                f"{int(bits)}bit",
                "burst",
                str(tbf_burst(bits)),
                "latency",
                "50ms",
            ]
        )


def _peer_cmd(ns: str, *args: object) -> list[str]:
    return [
        "ip",
        "netns",
        "exec",
        ns,
        sys.executable,
        "-m",
        "benchmarks.ring_peer",
        *(str(a) for a in args),
    ]


def _result(proc: subprocess.Popen[str], what: str) -> dict[str, Any]:
    out, err = proc.communicate(timeout=PEER_TIMEOUT)
    for line in out.splitlines():
        if line.startswith("RESULT "):
            parsed: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return parsed
    tail = "\n".join(err.strip().splitlines()[-15:])
    raise RuntimeError(
        f"{what} exited {proc.returncode} without a result; its stderr ends:\n{tail}"
    )


def _measure(
    names: Sequence[str], elements: int, reps: int, compressions: Sequence[str], stream: int
) -> dict[str, Any]:
    """Run both ranks at the current link setting; rank 1's figures (both send alike)."""
    secret = secrets.token_hex(32)
    common = (secret, elements, reps, ",".join(compressions), stream)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    rank0 = subprocess.Popen(
        _peer_cmd(names[0], 0, ADDRESSES[0], *common),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    rank1: subprocess.Popen[str] | None = None
    try:
        assert rank0.stdout is not None
        line = rank0.stdout.readline()
        if not line.startswith("ADDRESS "):
            raise RuntimeError(f"rank 0 printed {line!r} instead of its address")
        rank1 = subprocess.Popen(
            _peer_cmd(names[1], 1, line.split()[1], *common),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        one = _result(rank1, "rank 1")
        _result(rank0, "rank 0")
        return one
    finally:
        for proc in (rank0, rank1):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def measure_links(
    rates: Sequence[str], compressions: Sequence[str], elements: int, reps: int, mtu: int
) -> list[LinkRow]:
    """Every (rate, compression) pair, on one pair of namespaces."""
    rows: list[LinkRow] = []
    with _two_hosts(mtu) as (names, veths):
        for rate in rates:
            bits = parse_rate(rate)
            _limit(names, veths, bits)
            # a stream of ~2 s at the rate (unlimited: 2 GB), at least 64 MiB
            stream = max(64 << 20, int((bits or 8e9) / 8 * 2))
            got = _measure(names, elements, reps, compressions, stream)
            stream_gbit = got["stream_bytes"] * 8 / got["stream_seconds"] / 1e9
            base = got["allreduce"]["none"]["seconds"] if "none" in got["allreduce"] else None
            for name in compressions:
                t = got["allreduce"][name]
                rows.append(
                    LinkRow(
                        rate,
                        name,
                        elements,
                        t["seconds"],
                        t["bytes_sent"],
                        stream_gbit,
                        (base / t["seconds"]) if base else 1.0,
                    )
                )
                print(
                    f"  {rate:>7} {name:>5}: {t['seconds']:.3f} s per all-reduce, "
                    f"{t['bytes_sent'] / 1e6:.1f} MB sent (stream {stream_gbit:.2f} Gbit/s)",
                    flush=True,
                )
            _limit(names, veths, None)
    return rows


def report_markdown(rows: Sequence[LinkRow], mtu: int) -> str:
    """The table of every row, with how to read it."""
    lines = [
        [
            r.rate,
            f"{r.stream_gbit:.2f}",
            r.compression,
            f"{r.seconds * 1e3:.0f}",
            f"{r.bytes_sent / 1e6:.1f}",
            f"{r.algo_gbit:.2f}",
            f"{r.speedup:.2f}x",
        ]
        for r in rows
    ]
    elements = rows[0].elements if rows else 0
    return (
        "# Ring all-reduce between two namespaces on rate-limited links\n\n"
        f"{elements / 1e6:.0f}M float32 gradient values, 2 ranks (one per namespace), "
        f"tfyarn tcp transport, MTU {mtu}; `tc tbf` on each veth end's egress. "
        "'stream' is one tcp connection's one-way rate on the same link; 'gradient "
        "Gbit/s' is the float32 buffer's size over the time of one all-reduce; speed-up "
        "is against `none` on the same link, measured in the same run.\n\n"
        + markdown_table(
            [
                "link",
                "stream Gbit/s",
                "compression",
                "ms per all-reduce",
                "MB sent per rank",
                "gradient Gbit/s",
                "speed-up",
            ],
            lines,
        )
    )


def _write_png(path: Path, rows: Sequence[LinkRow]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rates = list(dict.fromkeys(r.rate for r in rows))
    comps = list(dict.fromkeys(r.compression for r in rows))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / max(1, len(comps))
    for i, comp in enumerate(comps):
        ys = [
            next((r.seconds * 1e3 for r in rows if r.rate == rate and r.compression == comp), 0)
            for rate in rates
        ]
        ax.bar([x + i * width for x in range(len(rates))], ys, width, label=comp)
    ax.set_xticks([x + width * (len(comps) - 1) / 2 for x in range(len(rates))], rates)
    ax.set_yscale("log")
    ax.set_xlabel("link rate (tc tbf)")
    ax.set_ylabel("ms per all-reduce")
    ax.set_title(f"Ring all-reduce of {rows[0].elements / 1e6:.0f}M float32, 2 namespaces")
    ax.legend(title="compression")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for the JSON/markdown/PNG")
    parser.add_argument(
        "--rates",
        default=",".join(DEFAULT_RATES),
        help="link rates, comma-separated (tc syntax, or none)",
    )
    parser.add_argument(
        "--compressions",
        default=",".join(DEFAULT_COMPRESSIONS),
        help="compressions to compare (none is the baseline)",
    )
    parser.add_argument(
        "--elements", type=float, default=25e6, help="float32 values per all-reduce (default 25M)"
    )
    parser.add_argument("--reps", type=int, default=3, help="timed all-reduces per setting")
    parser.add_argument("--mtu", type=int, default=1500, help="the veth's MTU")


def run(args: argparse.Namespace) -> int:
    """Measure, print and write the report; 2 when this host cannot run it."""
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        print(
            "tfyarn bench links creates network namespaces and qdiscs: it needs root and "
            f"iproute2 (missing: {', '.join(missing) or 'root'})",
            file=sys.stderr,
        )
        return 2
    rates = [r.strip() for r in args.rates.split(",") if r.strip()]
    compressions = [c.strip() for c in args.compressions.split(",") if c.strip()]
    for rate in rates:
        parse_rate(rate)
    from tfyarn.exchange.compression import wire_dtype

    for name in compressions:
        wire_dtype(name)
    started = time.monotonic()
    rows = measure_links(rates, compressions, int(args.elements), args.reps, args.mtu)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {**machine_info(), "mtu": args.mtu, "seconds": time.monotonic() - started}
    payload = {"meta": meta, "rows": [{**asdict(r), "algo_gbit": r.algo_gbit} for r in rows]}
    (out / "links.json").write_text(json.dumps(payload, indent=2) + "\n")
    table = report_markdown(rows, args.mtu)
    (out / "links.md").write_text(table)
    _write_png(out / "links.png", rows)
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.link_bench``."""
    parser = argparse.ArgumentParser(prog="tfyarn bench links", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
