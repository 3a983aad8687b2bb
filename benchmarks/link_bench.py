"""``tfyarn bench links``: the ring all-reduce between two hosts on rate-limited links.

Two network namespaces on a bridge stand for two hosts (:mod:`benchmarks.netns`);
``tc qdisc ... tbf`` limits each host's link, both ways, to a link rate (``--rates``,
e.g. 1, 10 and 25 Gbit/s; ``none`` leaves the links unlimited, which shows what this
machine itself sustains). For each
rate, one rank process per namespace (:mod:`benchmarks.ring_peer`) measures in the same
run:

(a) the **sustained rate** of one tfyarn tcp connection over the link (a one-way stream);
(b) the **ring all-reduce** of a ``--elements`` float32 gradient (default 25M, a
    ~25M-parameter model) with each ``--compressions`` (``none`` is the baseline,
    ``fp16``/``bf16`` send half types, summing in float32, ``topk`` the largest 1 % with
    error feedback): seconds per all-reduce, bytes each rank sent, and the speed-up over
    ``none`` on the same link.

Needs root (it creates namespaces, veth pairs, a bridge and qdiscs), ``ip`` and ``tc``;
it deletes everything it made, also on failure. Writes ``links.json``, ``links.md`` and
``links.png`` under ``--out`` and prints the table. Only the exchange is timed, not a
training step: ``tfyarn bench scaling`` (:mod:`benchmarks.scaling_bench`) times whole
steps on the same kind of links.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_OUT, machine_info, markdown_table
from benchmarks.netns import (
    Hosts,
    bridged_hosts,
    limit_links,
    parse_rate,
    refusal,
    tbf_burst,
)

__all__ = [
    "LinkRow",
    "add_arguments",
    "main",
    "measure_stream",
    "parse_rate",
    "run",
    "stream_bytes",
    "tbf_burst",
]

DEFAULT_RATES = ("1gbit", "10gbit", "25gbit", "none")
DEFAULT_COMPRESSIONS = ("none", "fp16", "bf16", "topk")
#: The hosts' /24 (:func:`benchmarks.netns.bridged_hosts`).
SUBNET = "10.219.9"
#: Seconds one rank process may take at one rate.
PEER_TIMEOUT = 600.0


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
    hosts: Hosts, elements: int, reps: int, compressions: Sequence[str], stream: int
) -> dict[str, Any]:
    """Run a rank on each of the first two hosts at the current link setting.

    Rank 1's figures (both send alike).
    """
    names = hosts.namespaces
    secret = secrets.token_hex(32)
    common = (secret, elements, reps, ",".join(compressions), stream)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    rank0 = subprocess.Popen(
        _peer_cmd(names[0], 0, hosts.addresses[0], *common),
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


def stream_bytes(bits: float | None) -> int:
    """The one-way stream's length: ~2 s at the rate (unlimited: 2 GB), at least 64 MiB."""
    return max(64 << 20, int((bits or 8e9) / 8 * 2))


def measure_stream(hosts: Hosts, bits: float | None) -> float:
    """Gbit/s one tfyarn tcp connection sustains from host 1 to host 0 (limited to ``bits``).

    The links must already be limited (:func:`benchmarks.netns.limit_links`); ``bits``
    only sizes the stream.
    """
    got = _measure(hosts, 1024, 1, ["none"], stream_bytes(bits))
    return float(got["stream_bytes"] * 8 / got["stream_seconds"] / 1e9)


def measure_links(
    rates: Sequence[str], compressions: Sequence[str], elements: int, reps: int, mtu: int
) -> list[LinkRow]:
    """Every (rate, compression) pair, on one pair of hosts."""
    rows: list[LinkRow] = []
    with bridged_hosts(2, mtu, prefix="tfl", subnet=SUBNET) as hosts:
        for rate in rates:
            bits = parse_rate(rate)
            limit_links(hosts, bits)
            got = _measure(hosts, elements, reps, compressions, stream_bytes(bits))
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
            limit_links(hosts, None)
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
        f"tfyarn tcp transport, MTU {mtu}; `tc tbf` on each host's link, both ways "
        "(the hosts are namespaces on a bridge). "
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
    parser.add_argument("--mtu", type=int, default=1500, help="the links' MTU")


def run(args: argparse.Namespace) -> int:
    """Measure, print and write the report; 2 when this host cannot run it."""
    problem = refusal("tfyarn bench links")
    if problem:
        print(problem, file=sys.stderr)
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
