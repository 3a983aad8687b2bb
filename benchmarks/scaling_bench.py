"""``tfyarn bench scaling``: whole training steps of 1, 2 and 4 trainers on rate-limited links.

Every trainer is a process (:mod:`benchmarks.scaling_peer`) in the network namespace of
its "host"; the hosts are namespaces on one bridge (:mod:`benchmarks.netns`), and each
host's link is limited both ways with ``tc qdisc ... tbf`` to each of ``--rates``. One
host per trainer by default; ``--per-host 2`` puts trainers pairwise on one host (one
namespace, one address), where the exchange may reduce inside the host first. For each
rate the run first measures the rate one tfyarn tcp connection sustains from one host to
another (:func:`benchmarks.link_bench.measure_stream`): the link's real rate, stated next
to the nominal one.

Two models, on synthetic data made with a fixed seed, SGD with momentum:

* ``mlp``: 6 Dense(2048) layers over a 2048-wide input, and a Dense(10) head:
  25,198,602 parameters (~100 MB of float32 gradient per step);
* ``small``: 50 blocks of Dense(64) and BatchNormalization (101 layers with the head):
  215,050 trainable parameters in 202 variables.

The systems, each measured in the same run on the same links (``--systems``):

* ``tfyarn``: the exchange's ``allreduce`` strategy, gradients exchanged bucket by bucket
  (``bucket_bytes`` 4 MiB) while backpropagation goes on;
* ``tfyarn-fused``: the same with ``bucket_bytes`` 1 GiB: one fused exchange after the
  whole backward pass, as tfyarn did before overlap;
* ``mwms``: TensorFlow's ``MultiWorkerMirroredStrategy``, a custom loop (``strategy.run``),
  its default collective implementation, ``TF_CONFIG`` naming the hosts' addresses;
* ``tfyarn-fp16`` (optional): ``tfyarn`` with ``compression="fp16"``.

Each tfyarn trainer is built as ``tfyarn.run`` would build it: a
:class:`~tfyarn.exchange.local.LocalContext` with a tcp listener on its host's address
and the peers' addresses gathered here, ``ctx.strategy()``, ``distributed_optimizer``,
``apply_gradients`` in a ``tf.function`` and ``strategy.begin``. One process per trainer
runs every system (MWMS outside the others' way: its models live in its scope), so that
all are measured by the same processes, in turn: on each link, ``--rounds`` rounds of
every system in alternating order (A B C, then C B A), each round ``--steps`` timed steps
after a warm-up (``--warmup`` in the first round, which traces, one after) that every
trainer ends before any starts its timed steps. A model of millisecond steps takes
``step_scale`` times as many (x8 for ``small``).

Reported per configuration (trainers, model, link, system): the median of each trainer's
step times over all rounds, the slowest trainer's:

* **step**: seconds per training step;
* **compute**: the same step with no exchange at all (plain local ``apply_gradients``),
  measured with the same number of trainer processes running at once, so that they
  share the CPU as the exchanging trainers do;
* **exposed** communication = step - compute;
* **scaling efficiency** = compute / step. On this 2-core machine throughput cannot grow
  with more processes, whatever the network, so efficiency is measured against the
  compute of the same number of trainers under the same contention: it is the share of
  the step that the exchange does not add;
* **throughput**: trainers x batch / step, in samples per second, and its ratio to
  MWMS's on the same link;
* **link ms**: the least time the link needs to move one step's all-reduce at the
  measured stream rate (2 (h-1)/h of the gradient for h hosts): no exchange can expose
  less than that minus the compute it overlaps.

The issue's targets are printed against the ``tfyarn`` rows: efficiency >= 0.9 where the
link allows it (link ms within the compute), exposed <= 10 % of the step on the 10 Gbit/s
link, throughput >= 1.5x MWMS's on the 1 Gbit/s link.

Needs root, ``ip`` and ``tc``; deletes every namespace, veth, bridge and qdisc it made,
also on failure; every wait is bounded (``--timeout``). Writes ``scaling.json``,
``scaling.md`` and ``scaling.png`` under ``--out`` (the trainers' logs under
``scaling-logs/``). The default run takes ~10-15 minutes on 2 cores; ``--quick`` ~2.
Other work on the machine shows in every figure (the JSON keeps the load average before
and after): compare the rows of one link, measured in alternation, rather than links.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from benchmarks.common import DEFAULT_OUT, machine_info, markdown_table
from benchmarks.link_bench import measure_stream
from benchmarks.netns import Hosts, bridged_hosts, limit_links, parse_rate, refusal

__all__ = [
    "EXCHANGE_OPTIONS",
    "MODELS",
    "ModelSpec",
    "PeerGroup",
    "Placement",
    "ScalingRow",
    "Settings",
    "TargetCheck",
    "Timing",
    "add_arguments",
    "combine_timings",
    "efficiency",
    "exchange_key",
    "exposed_seconds",
    "host_count",
    "main",
    "parameter_count",
    "peer_env",
    "plan_placement",
    "report_markdown",
    "resolve",
    "round_order",
    "run",
    "samples_per_second",
    "target_checks",
    "tf_config",
    "wire_seconds",
]


@dataclass(frozen=True)
class ModelSpec:
    """A stack of ``depth`` Dense(``width``, relu) layers (each followed by a
    BatchNormalization if ``batch_norm``) over ``inputs`` features, and a Dense head.

    ``step_scale`` multiplies ``--warmup`` and ``--steps`` for this model: a model whose
    steps take milliseconds needs more of them for a steady median.
    """

    name: str
    inputs: int
    width: int
    depth: int
    batch_norm: bool
    classes: int = 10
    step_scale: int = 1


#: The models of the benchmark, by ``--models`` name.
MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec("mlp", inputs=2048, width=2048, depth=6, batch_norm=False),
    "small": ModelSpec("small", inputs=64, width=64, depth=50, batch_norm=True, step_scale=8),
}
#: Exchange systems -> their ``strategy_options`` (``strategy="allreduce"``).
EXCHANGE_OPTIONS: dict[str, dict[str, Any]] = {
    "tfyarn": {},
    "tfyarn-fused": {"bucket_bytes": 1 << 30},
    "tfyarn-fp16": {"compression": "fp16"},
}
MWMS = "mwms"
#: The plain local step every system is compared with.
COMPUTE = "compute"
SYSTEMS = (*EXCHANGE_OPTIONS, MWMS)
DEFAULT_SYSTEMS = ("tfyarn", "tfyarn-fused", MWMS)
LABELS = {
    "tfyarn": "tfyarn (buckets, overlapped)",
    "tfyarn-fused": "tfyarn fused (before overlap)",
    "tfyarn-fp16": "tfyarn fp16 (buckets)",
    MWMS: "MWMS (TF collective ring)",
}
#: The ``link`` of a configuration whose trainers all share one host.
NO_LINK = "-"
#: The hosts' /24 (:func:`benchmarks.netns.bridged_hosts`).
SUBNET = "10.219.10"
#: MultiWorkerMirroredStrategy's first port on each host (one more per trainer there).
MWMS_PORT = 23450
#: Seconds for every trainer to start (TensorFlow imports, MWMS's rendezvous).
START_TIMEOUT = 300.0
#: Defaults of the full run, and of ``--quick`` (each only where the option is not given).
FULL = {
    "trainers": "1,2,4",
    "rates": "1gbit,10gbit,25gbit",
    "models": "mlp,small",
    "warmup": 2,
    "steps": 4,
    "rounds": 2,
}
QUICK = {
    "trainers": "1,2",
    "rates": "1gbit",
    "models": "small",
    "warmup": 1,
    "steps": 3,
    "rounds": 1,
}


def exchange_key(system: str, model: str) -> str:
    """The name of one exchange (one listener per trainer): ``SYSTEM@MODEL``."""
    return f"{system}@{model}"


def parameter_count(spec: ModelSpec) -> int:
    """Trainable parameters of ``spec``'s model (BatchNormalization: gamma and beta)."""
    dense = spec.width * (spec.inputs + 1) + (spec.depth - 1) * spec.width * (spec.width + 1)
    norm = 2 * spec.width * spec.depth if spec.batch_norm else 0
    return dense + norm + spec.classes * (spec.width + 1)


# -- where the trainers run --------------------------------------------------------------
@dataclass(frozen=True)
class Placement:
    """Where trainer ``rank`` runs: host ``host``, the ``slot``-th trainer there."""

    rank: int
    host: int
    slot: int


def host_count(trainers: int, per_host: int) -> int:
    """Hosts that ``trainers`` trainers fill, ``per_host`` on each (the last may hold fewer)."""
    return -(-trainers // per_host)


def plan_placement(trainers: int, per_host: int) -> list[Placement]:
    """Trainers in rank order, ``per_host`` consecutive ranks on each host.

    Raises
    ------
    ValueError
        Fewer than one trainer, or fewer than one per host.
    """
    if trainers < 1 or per_host < 1:
        raise ValueError(f"need trainers >= 1 and per_host >= 1, got {trainers}, {per_host}")
    return [Placement(rank, rank // per_host, rank % per_host) for rank in range(trainers)]


def tf_config(
    placements: Sequence[Placement], addresses: Sequence[str], rank: int, base_port: int
) -> dict[str, Any]:
    """Trainer ``rank``'s ``TF_CONFIG``: every worker at its host's address, one port each."""
    cluster = [f"{addresses[p.host]}:{base_port + p.slot}" for p in placements]
    return {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": rank}}


# -- what the figures mean ---------------------------------------------------------------
def efficiency(compute_s: float, step_s: float) -> float:
    """Scaling efficiency: the step's compute over the step (1.0: nothing exposed)."""
    return compute_s / step_s


def exposed_seconds(step_s: float, compute_s: float) -> float:
    """Communication the step does not hide: step - compute (noise can make it < 0)."""
    return step_s - compute_s


def samples_per_second(trainers: int, batch: int, step_s: float) -> float:
    """Samples all trainers together take per second."""
    return trainers * batch / step_s


def wire_seconds(
    gradient_bytes: float, hosts: int, stream_gbit: float | None, wire_factor: float = 1.0
) -> float:
    """Least seconds a link needs for one all-reduce between ``hosts`` hosts.

    Each host must send (and receive) ``2 (hosts - 1) / hosts`` of the gradient (times
    ``wire_factor``, 0.5 for half types) over its own link, whatever the algorithm
    (bandwidth-optimal ring, hierarchical or not); 0 on one host.
    """
    if hosts < 2:
        return 0.0
    if not stream_gbit:
        return math.nan
    return 2 * (hosts - 1) / hosts * gradient_bytes * wire_factor * 8 / (stream_gbit * 1e9)


@dataclass(frozen=True)
class ScalingRow:
    """One configuration's figures (seconds; see the module docstring)."""

    trainers: int
    per_host: int
    hosts: int
    model: str
    params: int
    batch: int
    rate: str
    stream_gbit: float | None
    system: str
    step_s: float
    compute_s: float
    mwms_step_s: float | None
    replicas_equal: bool | None
    rank_medians: list[float] = field(default_factory=list)

    @property
    def exposed_s(self) -> float:
        """Step minus compute."""
        return exposed_seconds(self.step_s, self.compute_s)

    @property
    def exposed_share(self) -> float:
        """Exposed communication as a share of the step."""
        return self.exposed_s / self.step_s

    @property
    def efficiency(self) -> float:
        """Compute over step."""
        return efficiency(self.compute_s, self.step_s)

    @property
    def samples_per_s(self) -> float:
        """All trainers' samples per second."""
        return samples_per_second(self.trainers, self.batch, self.step_s)

    @property
    def vs_mwms(self) -> float | None:
        """Throughput over MWMS's in the same configuration (None: MWMS not measured)."""
        return self.mwms_step_s / self.step_s if self.mwms_step_s else None

    @property
    def wire_s(self) -> float:
        """Least link time of one step's all-reduce (:func:`wire_seconds`)."""
        factor = 0.5 if EXCHANGE_OPTIONS.get(self.system, {}).get("compression") else 1.0
        return wire_seconds(self.params * 4, self.hosts, self.stream_gbit, factor)

    def figures(self) -> dict[str, Any]:
        """Every field and derived figure (for the JSON)."""
        derived = ("exposed_s", "exposed_share", "efficiency", "samples_per_s", "vs_mwms", "wire_s")
        return {**asdict(self), **{name: getattr(self, name) for name in derived}}


@dataclass(frozen=True)
class TargetCheck:
    """One of the issue's targets, checked on one row."""

    row: ScalingRow
    target: str
    value: str
    met: bool | None  # None: the link does not allow it


def _rate_is(rate: str, bits: float) -> bool:
    return rate != NO_LINK and parse_rate(rate) == bits


def target_checks(rows: Sequence[ScalingRow]) -> list[TargetCheck]:
    """The issue's targets on every ``tfyarn`` row with more than one trainer."""
    checks: list[TargetCheck] = []
    for r in rows:
        if r.system != "tfyarn" or r.trainers < 2:
            continue
        allowed = r.wire_s <= r.compute_s
        checks.append(
            TargetCheck(
                r,
                "efficiency >= 0.9 where the link allows it",
                f"{r.efficiency:.2f}",
                (r.efficiency >= 0.9) if allowed else None,
            )
        )
        if _rate_is(r.rate, 10e9):
            checks.append(
                TargetCheck(
                    r,
                    "exposed <= 10% of the step at 10gbit",
                    f"{r.exposed_share:.0%}",
                    r.exposed_share <= 0.10,
                )
            )
        if _rate_is(r.rate, 1e9) and r.vs_mwms is not None:
            checks.append(
                TargetCheck(
                    r, ">= 1.5x MWMS throughput at 1gbit", f"{r.vs_mwms:.2f}x", r.vs_mwms >= 1.5
                )
            )
    return checks


# -- options -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """The run's options, checked (:func:`resolve`)."""

    trainers: tuple[int, ...]
    per_host: int
    rates: tuple[str, ...]
    models: tuple[str, ...]
    systems: tuple[str, ...]
    batch: int
    warmup: int
    steps: int
    rounds: int
    mtu: int
    timeout: float
    seed: int
    out: str


def _names(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))


def resolve(args: argparse.Namespace) -> Settings:
    """The options of ``args`` with ``--quick``'s or the full run's defaults filled in.

    Raises
    ------
    ValueError
        An unknown model or system, a bad rate, or a count below 1.
    """
    defaults = QUICK if args.quick else FULL

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return defaults[name] if value is None else value

    try:
        trainers = tuple(sorted({int(t) for t in _names(pick("trainers"))}))
    except ValueError:
        raise ValueError(f"--trainers: comma-separated counts, not {args.trainers!r}") from None
    rates, models, systems = _names(pick("rates")), _names(pick("models")), _names(args.systems)
    for rate in rates:
        parse_rate(rate)
    problems = [f"unknown model {m!r} (use {', '.join(MODELS)})" for m in models if m not in MODELS]
    problems += [
        f"unknown system {s!r} (use {', '.join(SYSTEMS)})" for s in systems if s not in SYSTEMS
    ]
    counts = {
        "--trainers": min(trainers, default=0),
        "--per-host": args.per_host,
        "--batch": args.batch,
        "--steps": pick("steps"),
        "--rounds": pick("rounds"),
    }
    problems += [f"{name} must be at least 1" for name, n in counts.items() if n < 1]
    if pick("warmup") < 1:
        problems.append("--warmup must be at least 1 (the first step traces the function)")
    if not (rates and models and systems):
        problems.append("--rates, --models and --systems each need at least one name")
    if problems:
        raise ValueError("; ".join(problems))
    return Settings(
        trainers,
        args.per_host,
        rates,
        models,
        systems,
        args.batch,
        pick("warmup"),
        pick("steps"),
        pick("rounds"),
        args.mtu,
        args.timeout,
        args.seed,
        args.out,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for the JSON/markdown/PNG")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a ~2-minute run: {', '.join(f'--{k} {v}' for k, v in QUICK.items())} "
        "(options given override it)",
    )
    parser.add_argument("--trainers", help=f"trainer counts (default {FULL['trainers']})")
    parser.add_argument(
        "--per-host",
        type=int,
        default=1,
        help="trainers per host (network namespace); 2 puts them pairwise on one host",
    )
    parser.add_argument("--rates", help=f"link rates, tc syntax (default {FULL['rates']})")
    parser.add_argument("--models", help=f"models: mlp, small (default {FULL['models']})")
    parser.add_argument(
        "--systems",
        default=",".join(DEFAULT_SYSTEMS),
        help=f"systems to compare, of {', '.join(SYSTEMS)}",
    )
    parser.add_argument("--batch", type=int, default=32, help="samples per step and trainer")
    parser.add_argument("--warmup", type=int, help=f"untimed steps (default {FULL['warmup']})")
    parser.add_argument(
        "--steps", type=int, help=f"timed steps per round (default {FULL['steps']})"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"rounds of every system on each link, in alternating order (default "
        f"{FULL['rounds']})",
    )
    parser.add_argument("--mtu", type=int, default=1500, help="the links' MTU")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds one measurement may take"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and data")


# -- the trainer processes ---------------------------------------------------------------
class PeerGroup:
    """The trainer processes, spoken to in lockstep over their stdin and stdout.

    Each process's stdout is read by a thread into one queue; every wait on it is
    bounded. Their stderr goes to ``logs``.
    """

    def __init__(self, commands: Sequence[list[str]], env: Mapping[str, str], logs: Path) -> None:
        self.events: queue.Queue[tuple[int, str | None]] = queue.Queue()
        self.logs = [logs.with_name(f"{logs.name}-{i}.log") for i in range(len(commands))]
        logs.parent.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen[str]] = []
        try:
            for cmd, log in zip(commands, self.logs, strict=True):
                with open(log, "w") as err:
                    proc = subprocess.Popen(
                        cmd,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                        env=dict(env),
                    )
                self.procs.append(proc)
                threading.Thread(
                    target=self._read, args=(len(self.procs) - 1, proc.stdout), daemon=True
                ).start()
        except BaseException:
            self.close()
            raise

    def _read(self, index: int, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self.events.put((index, line.rstrip("\n")))
        self.events.put((index, None))

    def send(self, index: int, message: Mapping[str, Any]) -> None:
        """One JSON line to trainer ``index``."""
        stdin = self.procs[index].stdin
        assert stdin is not None
        stdin.write(json.dumps(message) + "\n")
        stdin.flush()

    def broadcast(self, message: Mapping[str, Any]) -> None:
        """The same JSON line to every trainer."""
        for i in range(len(self.procs)):
            self.send(i, message)

    def _tail(self, index: int) -> str:
        text = self.logs[index].read_text(errors="replace") if self.logs[index].exists() else ""
        return "\n".join(text.strip().splitlines()[-20:])

    def collect(self, word: str, timeout: float) -> list[Any]:
        """Every trainer's next ``word`` line's payload (None where it has none).

        Raises
        ------
        RuntimeError
            A trainer failed, exited, or did not answer within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        got: dict[int, Any] = {}
        while len(got) < len(self.procs):
            try:
                index, line = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                late = [i for i in range(len(self.procs)) if i not in got]
                raise RuntimeError(
                    f"trainers {late} did not answer {word} within {timeout:.0f} s; "
                    f"trainer {late[0]}'s log ends:\n{self._tail(late[0])}"
                ) from None
            if line is None or line.startswith("ERROR "):
                why = json.loads(line[6:]) if line else f"exited ({self.procs[index].poll()})"
                raise RuntimeError(f"trainer {index} failed: {why}\n{self._tail(index)}")
            if line == word or line.startswith(word + " "):
                rest = line[len(word) :].strip()
                got[index] = json.loads(rest) if rest else None
        return [got[i] for i in range(len(self.procs))]

    def close(self, grace: float = 30.0) -> None:
        """Ask every trainer to stop; kill those still running after ``grace`` seconds."""
        for proc in self.procs:
            with contextlib.suppress(OSError, ValueError):
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({"op": "stop"}) + "\n")
                proc.stdin.close()
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def peer_env() -> dict[str, str]:
    """The trainers' environment: this checkout importable, quiet TensorFlow, no proxy."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONUNBUFFERED="1",
    )
    return env  # no proxy: gRPC (MWMS) would send the hosts' traffic to one


@dataclass(frozen=True)
class Timing:
    """One (model, link, system)'s measurement on every trainer."""

    step_s: float  # the slowest trainer's median
    rank_medians: list[float]
    replicas_equal: bool
    params: int


def combine_timings(rounds: Sequence[Sequence[Mapping[str, Any]]]) -> Timing:
    """Every round's ``RESULT`` of every trainer (``rounds[round][rank]``) as one Timing.

    Each trainer's median is over its step times of all rounds; the step is the slowest
    trainer's median; the replicas are equal when the last round's checksums are.
    """
    ranks = range(len(rounds[0]))
    medians = [statistics.median(t for r in rounds for t in r[k]["times"]) for k in ranks]
    sums = [float(r["checksum"]) for r in rounds[-1]]
    equal = all(math.isclose(s, sums[0], rel_tol=1e-7, abs_tol=1e-6) for s in sums)
    return Timing(max(medians), medians, equal, int(rounds[0][0]["params"]))


def round_order(systems: Sequence[str], round_index: int) -> list[str]:
    """The systems in the order of one round: as given, then reversed, and so on.

    Alternating (A B C, C B A) spreads any drift of the machine's load evenly over them.
    """
    return list(systems) if round_index % 2 == 0 else list(reversed(systems))


@contextlib.contextmanager
def _trainers(settings: Settings, hosts: Hosts, trainers: int, logs: Path) -> Iterator[PeerGroup]:
    """Start one trainer process per placement, their exchanges connected; stop them."""
    placements = plan_placement(trainers, settings.per_host)
    secret = secrets.token_hex(32)
    keys = [
        exchange_key(s, m)
        for s in settings.systems
        if s in EXCHANGE_OPTIONS
        for m in settings.models
    ]
    cmd = [sys.executable, "-m", "benchmarks.scaling_peer"]
    group = PeerGroup([hosts.netns(p.host, *cmd) for p in placements], peer_env(), logs)
    try:
        for p in placements:
            init = {
                "rank": p.rank,
                "size": trainers,
                "secret": secret,
                "address": hosts.addresses[p.host],
                "keys": keys,
                "mwms": MWMS in settings.systems,
                "tf_config": tf_config(placements, hosts.addresses, p.rank, MWMS_PORT),
                "batch": settings.batch,
                "seed": settings.seed,
            }
            group.send(p.rank, init)
        addresses = group.collect("ADDRESS", START_TIMEOUT)
        peers = {k: {f"worker:{r}": a[k] for r, a in enumerate(addresses)} for k in keys}
        group.broadcast({"peers": peers})
        group.collect("READY", START_TIMEOUT)
        yield group
    finally:
        group.close()


def _measure_once(
    group: PeerGroup, settings: Settings, model: str, system: str, warmup: int
) -> list[Any]:
    """One round of one system: warm up, start the timed steps together, every RESULT."""
    scale = MODELS[model].step_scale
    group.broadcast(
        {
            "op": "measure",
            "model": model,
            "system": system,
            "warmup": warmup * scale,
            "steps": settings.steps * scale,
        }
    )
    group.collect("WARM", settings.timeout)
    group.broadcast({"op": "go"})  # timed steps start together on every trainer
    return group.collect("RESULT", settings.timeout)


def _measure_model(
    group: PeerGroup,
    settings: Settings,
    hosts: Hosts,
    model: str,
    rates: Sequence[str],
) -> dict[tuple[str, str, str], Timing]:
    """(model, link, system) -> timing of one model on every link; then its trainers go.

    On each link, ``settings.rounds`` rounds of every system (and the plain ``compute``
    step), in alternating order; the first round warms up ``--warmup`` steps (tracing),
    the others one.
    """
    systems = [COMPUTE, *settings.systems]
    timings: dict[tuple[str, str, str], Timing] = {}
    for rate in rates:
        limit_links(hosts, None if rate == NO_LINK else parse_rate(rate))
        results: dict[str, list[Any]] = {s: [] for s in systems}
        for i in range(settings.rounds):
            for system in round_order(systems, i):
                warmup = settings.warmup if i == 0 else 1
                results[system].append(_measure_once(group, settings, model, system, warmup))
        for system in systems:
            t = timings[(model, rate, system)] = combine_timings(results[system])
            print(
                f"  [{time.strftime('%H:%M:%S')}] {len(group.procs)} trainers, {model}, "
                f"link {rate}: {system} {t.step_s * 1e3:.0f} ms per step",
                flush=True,
            )
    group.broadcast({"op": "drop", "model": model})
    group.collect("RESULT", settings.timeout)
    return timings


def _measure_trainers(
    settings: Settings, hosts: Hosts, trainers: int, out: Path
) -> dict[tuple[str, str, str], Timing]:
    """(model, link, system) -> timing, for ``trainers`` trainers."""
    n_hosts = host_count(trainers, settings.per_host)
    rates = settings.rates if n_hosts > 1 else (NO_LINK,)
    timings: dict[tuple[str, str, str], Timing] = {}
    logs = out / "scaling-logs" / f"{trainers}x{settings.per_host}"
    try:
        with _trainers(settings, hosts, trainers, logs) as group:
            for model in settings.models:
                timings.update(_measure_model(group, settings, hosts, model, rates))
    finally:
        limit_links(hosts, None)
    return timings


def _rows(
    settings: Settings,
    trainers: int,
    timings: Mapping[tuple[str, str, str], Timing],
    streams: Mapping[str, float],
) -> list[ScalingRow]:
    """The rows of one trainer count, every system beside its compute and MWMS."""
    rows = []
    n_hosts = host_count(trainers, settings.per_host)
    for (model, rate, system), t in timings.items():
        if system == COMPUTE:
            continue
        mwms = timings.get((model, rate, MWMS))
        rows.append(
            ScalingRow(
                trainers,
                settings.per_host,
                n_hosts,
                model,
                t.params,
                settings.batch,
                rate,
                streams.get(rate),
                system,
                t.step_s,
                timings[(model, rate, COMPUTE)].step_s,
                mwms.step_s if mwms else None,
                t.replicas_equal if trainers > 1 else None,
                t.rank_medians,
            )
        )
    order = {s: i for i, s in enumerate(SYSTEMS)}
    return sorted(rows, key=lambda r: (r.model, _rate_order(r.rate), order[r.system]))


def _rate_order(rate: str) -> float:
    """Links from the slowest; no link first, no limit last."""
    if rate == NO_LINK:
        return 0.0
    return parse_rate(rate) or math.inf


def measure(settings: Settings) -> tuple[list[ScalingRow], dict[str, float]]:
    """Every configuration of ``settings``: the rows, and each link's stream rate."""
    out = Path(settings.out)
    n_max = max(host_count(t, settings.per_host) for t in settings.trainers)
    rows: list[ScalingRow] = []
    streams: dict[str, float] = {}
    with bridged_hosts(n_max, settings.mtu, prefix="tfs", subnet=SUBNET) as hosts:
        if n_max > 1:
            for rate in settings.rates:
                bits = parse_rate(rate)
                limit_links(hosts, bits)
                streams[rate] = measure_stream(hosts, bits)
                print(
                    f"  link {rate}: one tcp stream sustains {streams[rate]:.2f} Gbit/s", flush=True
                )
            limit_links(hosts, None)
        for trainers in settings.trainers:
            timings = _measure_trainers(settings, hosts, trainers, out)
            rows += _rows(settings, trainers, timings, streams)
    return rows, streams


# -- the report --------------------------------------------------------------------------
def _ms(seconds: float | None) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds * 1e3:.0f}"


def _table(rows: Sequence[ScalingRow]) -> str:
    headers = [
        "trainers",
        "hosts",
        "model",
        "link",
        "stream Gbit/s",
        "system",
        "step ms",
        "compute ms",
        "exposed ms",
        "exposed %",
        "link ms (least)",
        "efficiency",
        "samples/s",
        "vs MWMS",
        "replicas equal",
    ]
    lines = [
        [
            r.trainers,
            r.hosts,
            r.model,
            r.rate,
            "-" if r.stream_gbit is None else f"{r.stream_gbit:.2f}",
            LABELS[r.system],
            _ms(r.step_s),
            _ms(r.compute_s),
            _ms(r.exposed_s),
            f"{r.exposed_share:.0%}",
            _ms(r.wire_s),
            f"{r.efficiency:.2f}",
            f"{r.samples_per_s:.0f}",
            "-" if r.vs_mwms is None else f"{r.vs_mwms:.2f}x",
            {None: "-", True: "yes", False: "NO"}[r.replicas_equal],
        ]
        for r in rows
    ]
    return markdown_table(headers, lines)


def _targets(rows: Sequence[ScalingRow]) -> str:
    checks = target_checks(rows)
    if not checks:
        return "No tfyarn row with more than one trainer: no target to check.\n"
    verdict = {True: "met", False: "NOT met", None: "n/a (the link needs more than the compute)"}
    return "".join(
        f"- {c.row.trainers} trainers, {c.row.model}, link {c.row.rate}: {c.target}: "
        f"{c.value}, {verdict[c.met]}\n"
        for c in checks
    )


def report_markdown(
    rows: Sequence[ScalingRow], settings: Settings, streams: Mapping[str, float]
) -> str:
    """The table, how to read it, and the issue's targets."""
    models = "; ".join(
        f"`{m}` {parameter_count(MODELS[m]):,} trainable parameters" for m in settings.models
    )
    links = ", ".join(f"{rate} {gbit:.2f} Gbit/s" for rate, gbit in streams.items())
    scaled = ", ".join(f"x{MODELS[m].step_scale} for `{m}`" for m in settings.models)
    return (
        "# Scaling of whole training steps on rate-limited links\n\n"
        f"Trainers {', '.join(map(str, settings.trainers))}, {settings.per_host} per host "
        "(a host is a network namespace; the hosts are on one bridge, each host's link "
        f"limited both ways with `tc tbf`, MTU {settings.mtu}); models: {models}; batch "
        f"{settings.batch} per trainer, SGD with momentum, synthetic data (seed "
        f"{settings.seed}); {settings.rounds} rounds of every system on each link in "
        f"alternating order, {settings.steps} timed steps each after a warm-up "
        f"({settings.warmup} steps in the first round, 1 after; {scaled}); the median of "
        "each trainer's steps, the slowest trainer's. One tcp stream sustained: "
        f"{links or '(no link crossed)'}. Link `-`: all trainers on one host.\n\n"
        "*compute* is the same step without any exchange, run by as many trainer processes "
        "at once; *exposed* = step - compute; *efficiency* = compute / step. On this "
        f"{os.cpu_count()}-core machine throughput cannot grow with more processes, so "
        "efficiency is measured against compute under the same CPU contention: the share "
        "of the step that the exchange does not add. *link ms (least)*: the time the link "
        "needs for one step's all-reduce at the stream's rate (2 (h-1)/h of the gradient "
        "for h hosts). *vs MWMS*: throughput over MultiWorkerMirroredStrategy's on the "
        "same link. *replicas equal*: every trainer ended with the same weights.\n\n"
        + _table(rows)
        + "\nTargets (issue 16), on the `tfyarn` rows:\n\n"
        + _targets(rows)
    )


def write_png(path: Path, rows: Sequence[ScalingRow]) -> Path | None:
    """Efficiency and throughput per configuration, one column of plots per model.

    Returns None (and writes nothing) without matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    models = list(dict.fromkeys(r.model for r in rows))
    systems = list(
        dict.fromkeys(r.system for r in sorted(rows, key=lambda r: SYSTEMS.index(r.system)))
    )
    fig, axes = plt.subplots(2, len(models), figsize=(7 * len(models), 8), squeeze=False)
    width = 0.8 / max(1, len(systems))
    for col, model in enumerate(models):
        mine = [r for r in rows if r.model == model]
        configs = list(dict.fromkeys((r.trainers, r.rate) for r in mine))
        xs = range(len(configs))
        for i, system in enumerate(systems):
            by = {(r.trainers, r.rate): r for r in mine if r.system == system}
            pos = [x + i * width for x in xs]
            eff = [by[c].efficiency if c in by else 0 for c in configs]
            thr = [by[c].samples_per_s if c in by else 0 for c in configs]
            axes[0][col].bar(pos, eff, width, label=LABELS[system])
            axes[1][col].bar(pos, thr, width, label=LABELS[system])
        ticks = [x + width * (len(systems) - 1) / 2 for x in xs]
        labels = [f"{t} tr\n{rate}" for t, rate in configs]
        axes[0][col].axhline(0.9, color="grey", linestyle="--", linewidth=1)
        axes[0][col].set_ylabel("scaling efficiency (compute / step)")
        axes[1][col].set_ylabel("samples per second, all trainers")
        for row in (0, 1):
            axes[row][col].set_xticks(ticks, labels)
            axes[row][col].set_title(f"{model}")
        axes[0][col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _terminate(_signum: int, _frame: object) -> None:
    raise SystemExit(143)  # unwinds the finally blocks: processes and namespaces go


def run(args: argparse.Namespace) -> int:
    """Measure, print and write the report; 2 when this host cannot run it."""
    problem = refusal("tfyarn bench scaling")
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        settings = resolve(args)
    except ValueError as exc:
        print(f"tfyarn bench scaling: {exc}", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _terminate)
    started, load_before = time.monotonic(), os.getloadavg()[0]
    try:
        rows, streams = measure(settings)
    finally:
        signal.signal(signal.SIGTERM, previous)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        **machine_info(),
        "seconds": time.monotonic() - started,
        # other work on the machine shows in every figure: the 1-minute load, before and after
        "load_average": [load_before, os.getloadavg()[0]],
        "settings": asdict(settings),
        "parameters": {m: parameter_count(MODELS[m]) for m in settings.models},
        "stream_gbit": streams,
    }
    payload = {"meta": meta, "rows": [r.figures() for r in rows]}
    (out / "scaling.json").write_text(json.dumps(payload, indent=2) + "\n")
    text = report_markdown(rows, settings, streams)
    (out / "scaling.md").write_text(text)
    write_png(out / "scaling.png", rows)
    print(text)
    print(
        f"({meta['seconds']:.0f} s; 1-minute load average {load_before:.1f} before, "
        f"{meta['load_average'][1]:.1f} after)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.scaling_bench``."""
    parser = argparse.ArgumentParser(
        prog="tfyarn bench scaling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
