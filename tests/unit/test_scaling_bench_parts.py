"""``tfyarn bench scaling``: its arithmetic, placement plan, options and report.

The measurement itself needs root and network namespaces (``tfyarn bench scaling
--quick`` runs it); here only the pure parts, and the bounded waits of the trainer
group on plain local processes.
"""

from __future__ import annotations

import argparse
import math
import sys

import pytest

from benchmarks.scaling_bench import (
    EXCHANGE_OPTIONS,
    MODELS,
    PeerGroup,
    Placement,
    ScalingRow,
    add_arguments,
    combine_timings,
    efficiency,
    exposed_seconds,
    host_count,
    parameter_count,
    peer_env,
    plan_placement,
    report_markdown,
    resolve,
    round_order,
    samples_per_second,
    target_checks,
    tf_config,
    wire_seconds,
)
from tfyarn.cli.bench import BENCHMARKS, DESCRIPTION


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def _row(system: str = "tfyarn", **changes: object) -> ScalingRow:
    fields: dict[str, object] = dict(
        trainers=2, per_host=1, hosts=2, model="mlp", params=25_000_000, batch=32,
        rate="1gbit", stream_gbit=1.0, system=system, step_s=0.5, compute_s=0.4,
        mwms_step_s=1.0, replicas_equal=True,
    )  # fmt: skip
    fields.update(changes)
    return ScalingRow(**fields)  # type: ignore[arg-type]


def test_efficiency_is_compute_over_step_and_exposed_the_rest() -> None:
    assert efficiency(0.4, 0.5) == pytest.approx(0.8)
    assert exposed_seconds(0.5, 0.4) == pytest.approx(0.1)
    assert exposed_seconds(0.39, 0.4) == pytest.approx(-0.01)  # noise may hide more than all
    assert samples_per_second(4, 32, 0.5) == 256
    row = _row()
    assert row.efficiency == pytest.approx(0.8)
    assert row.exposed_s == pytest.approx(0.1)
    assert row.exposed_share == pytest.approx(0.2)
    assert row.samples_per_s == pytest.approx(128)
    assert row.vs_mwms == pytest.approx(2.0)  # MWMS takes twice as long per step
    assert _row(mwms_step_s=None).vs_mwms is None
    figures = _row().figures()
    assert figures["efficiency"] == pytest.approx(0.8) and figures["trainers"] == 2


def test_the_least_link_time_is_what_each_host_must_send() -> None:
    # 100 MB of gradient between 2 hosts at 1 Gbit/s: each sends half of it twice
    assert wire_seconds(100e6, 2, 1.0) == pytest.approx(0.8)
    assert wire_seconds(100e6, 4, 1.0) == pytest.approx(1.2)
    assert wire_seconds(100e6, 2, 1.0, 0.5) == pytest.approx(0.4)
    assert wire_seconds(100e6, 1, None) == 0.0  # one host: no link crossed
    assert math.isnan(wire_seconds(100e6, 2, None))
    assert _row().wire_s == pytest.approx(0.8)
    assert _row("tfyarn-fp16").wire_s == pytest.approx(0.4)  # half types on the wire
    assert _row("mwms").wire_s == pytest.approx(0.8)


def test_trainers_fill_hosts_in_rank_order() -> None:
    assert plan_placement(4, 1) == [Placement(r, r, 0) for r in range(4)]
    assert plan_placement(4, 2) == [
        Placement(0, 0, 0), Placement(1, 0, 1), Placement(2, 1, 0), Placement(3, 1, 1),
    ]  # fmt: skip
    assert plan_placement(1, 2) == [Placement(0, 0, 0)]
    assert [host_count(t, 2) for t in (1, 2, 3, 4)] == [1, 1, 2, 2]
    assert [host_count(t, 1) for t in (1, 2, 4)] == [1, 2, 4]
    with pytest.raises(ValueError):
        plan_placement(0, 1)
    with pytest.raises(ValueError):
        plan_placement(2, 0)


def test_tf_config_names_each_trainer_at_its_host_with_its_own_port() -> None:
    placements = plan_placement(4, 2)
    addresses = ["10.0.0.10", "10.0.0.11"]
    config = tf_config(placements, addresses, 3, 23450)
    assert config["cluster"]["worker"] == [
        "10.0.0.10:23450", "10.0.0.10:23451", "10.0.0.11:23450", "10.0.0.11:23451",
    ]  # fmt: skip
    assert config["task"] == {"type": "worker", "index": 3}


def test_the_models_have_the_stated_sizes() -> None:
    assert parameter_count(MODELS["mlp"]) == 25_198_602
    assert parameter_count(MODELS["small"]) == 215_050
    small = MODELS["small"]
    assert 2 * small.depth + 1 >= 100  # Dense + BatchNormalization per block, and a head
    assert EXCHANGE_OPTIONS["tfyarn-fused"]["bucket_bytes"] >= 4 * parameter_count(MODELS["mlp"])


def test_options_default_to_the_full_run_and_quick_to_a_short_one() -> None:
    full = resolve(_args())
    assert full.trainers == (1, 2, 4) and full.per_host == 1
    assert full.rates == ("1gbit", "10gbit", "25gbit")
    assert full.models == ("mlp", "small")
    assert full.systems == ("tfyarn", "tfyarn-fused", "mwms")
    assert full.rounds == 2 and full.warmup >= 1
    quick = resolve(_args("--quick"))
    assert quick.trainers == (1, 2) and quick.rates == ("1gbit",)
    assert quick.models == ("small",) and quick.steps < full.steps and quick.rounds == 1
    given = resolve(_args("--quick", "--trainers", "4,2,2", "--models", "mlp", "--per-host", "2",
                          "--systems", "tfyarn,tfyarn-fp16"))  # fmt: skip
    assert given.trainers == (2, 4) and given.models == ("mlp",) and given.per_host == 2
    assert given.systems == ("tfyarn", "tfyarn-fp16") and given.rates == ("1gbit",)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "cnn"], "unknown model 'cnn'"),
        (["--systems", "horovod"], "unknown system 'horovod'"),
        (["--rates", "fast"], "bad rate"),
        (["--trainers", "0,2"], "--trainers must be at least 1"),
        (["--trainers", "two"], "--trainers: comma-separated counts"),
        (["--per-host", "0"], "--per-host must be at least 1"),
        (["--warmup", "0"], "--warmup must be at least 1"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--rounds", "0"], "--rounds must be at least 1"),
    ],
)
def test_bad_options_are_refused_with_the_reason(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve(_args(*argv))


def test_targets_are_checked_on_the_tfyarn_rows_only() -> None:
    rows = [
        _row(rate="1gbit", stream_gbit=1.0, step_s=1.0, compute_s=0.95, mwms_step_s=1.6),
        _row(rate="10gbit", stream_gbit=9.5, step_s=0.5, compute_s=0.4, mwms_step_s=0.6),
        _row("mwms", rate="1gbit", step_s=1.6, compute_s=0.95, mwms_step_s=1.6),
        _row(trainers=1, hosts=1, rate="-", stream_gbit=None),
    ]
    checks = target_checks(rows)
    by = {(c.row.rate, c.target.split()[0]): c for c in checks}
    assert len(checks) == 4
    # 1 Gbit/s: 100 MB needs 0.8 s of link, within the 0.95 s of compute: allowed
    assert by[("1gbit", "efficiency")].met is True
    assert by[("1gbit", ">=")].met is True and by[("1gbit", ">=")].value == "1.60x"
    assert by[("10gbit", "efficiency")].met is False
    assert by[("10gbit", "exposed")].met is False and by[("10gbit", "exposed")].value == "20%"
    slow = target_checks([_row(step_s=2.0, compute_s=0.5)])
    assert slow[0].met is None  # the link needs 0.8 s, the compute is 0.5 s: not allowed


def test_the_report_defines_its_figures_and_lists_every_row() -> None:
    settings = resolve(_args("--models", "mlp", "--trainers", "2"))
    text = report_markdown([_row(), _row("mwms", step_s=1.0)], settings, {"1gbit": 0.96})
    assert "efficiency* = compute / step" in text and "same CPU contention" in text
    assert "`mlp` 25,198,602 trainable parameters" in text
    assert "1gbit 0.96 Gbit/s" in text
    assert "| 2 | 2 | mlp | 1gbit | 1.00 | tfyarn (buckets, overlapped) | 500 | 400 | 100 |" in text
    assert "| 800 | 0.80 | 128 | 2.00x | yes |" in text
    # the link needs 0.8 s for the gradient, the compute is 0.4 s
    assert "efficiency >= 0.9 where the link allows it: 0.80, n/a" in text
    assert ">= 1.5x MWMS throughput at 1gbit: 2.00x, met" in text


def _result(times: list[float], checksum: float = 12.5) -> dict[str, object]:
    return {"times": times, "checksum": checksum, "params": 7}


def test_each_trainers_median_is_over_all_rounds_and_the_slowest_counts() -> None:
    rounds = [
        [_result([0.1, 0.2, 0.9]), _result([0.3, 0.3, 0.3])],
        [_result([0.2, 0.2, 0.2]), _result([0.4, 0.5, 0.4])],
    ]
    t = combine_timings(rounds)
    assert t.rank_medians == [0.2, pytest.approx(0.35)]
    assert t.step_s == pytest.approx(0.35) and t.params == 7 and t.replicas_equal


def test_replicas_are_equal_only_when_every_last_checksum_is() -> None:
    first = [_result([0.2], 1.0), _result([0.2], 2.0)]  # before the last round: no matter
    assert combine_timings([first, [_result([0.2]), _result([0.2])]]).replicas_equal
    assert not combine_timings([[_result([0.2]), _result([0.2], 12.75)]]).replicas_equal


def test_rounds_alternate_the_order_of_the_systems() -> None:
    systems = ["compute", "tfyarn", "mwms"]
    assert round_order(systems, 0) == systems
    assert round_order(systems, 1) == ["mwms", "tfyarn", "compute"]
    assert round_order(systems, 2) == systems


def test_the_trainers_get_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "http://proxy:3128")
    monkeypatch.setenv("GRPC_PROXY", "http://proxy:3128")
    env = peer_env()
    assert not any(k.lower().endswith("_proxy") for k in env)
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "3"


def test_the_group_answers_bounded_waits_and_names_a_failed_trainer(tmp_path: object) -> None:
    from pathlib import Path

    logs = Path(str(tmp_path)) / "peer"
    ready = "import sys; print('noise'); print('READY', flush=True); sys.stdin.readline()"
    silent = "import time; time.sleep(30)"
    failing = "import sys; print('ERROR \"boom\"'); sys.stderr.write('the trace'); sys.exit(1)"
    group = PeerGroup([[sys.executable, "-c", ready]], {}, logs)
    try:
        assert group.collect("READY", 20) == [None]
    finally:
        group.close(grace=5)
    group = PeerGroup([[sys.executable, "-c", silent]], {}, logs)
    try:
        with pytest.raises(RuntimeError, match="did not answer READY within 0 s"):
            group.collect("READY", 0.2)
    finally:
        group.close(grace=0.1)  # killed: it reads no stop
    assert group.procs[0].returncode is not None
    group = PeerGroup([[sys.executable, "-c", failing]], {}, logs)
    try:
        with pytest.raises(RuntimeError, match="trainer 0 failed: boom"):
            group.collect("READY", 20)
    finally:
        group.close(grace=5)


def test_the_benchmark_is_registered() -> None:
    assert BENCHMARKS["scaling"] == "benchmarks.scaling_bench"
    assert "tfyarn bench scaling" in DESCRIPTION


def test_without_root_the_benchmark_says_what_is_missing() -> None:
    # a real unprivileged process (nobody), not a patched geteuid
    import os
    import shutil
    import subprocess
    import sys

    from benchmarks import netns

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to start an unprivileged process")
    code = "from benchmarks import netns; print(netns.refusal('tfyarn bench scaling'))"
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60, check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(netns.__file__))),
    )  # fmt: skip
    assert "needs root and iproute2 (missing: root" in out.stdout, out.stdout + out.stderr
    assert netns.refusal("tfyarn bench scaling") is None  # this process: root, ip and tc
