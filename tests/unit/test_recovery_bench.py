"""The pure part of ``tfyarn bench recovery``: model sizing, the records' figures, the report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import recovery_bench as rb
from tfyarn.errors import ConfigError

T0 = 1_000_000.0


def _recovery(**over: object) -> rb.Recovery:
    fields: dict[str, object] = {
        "killed_at": T0,
        "attempt_ended": T0 + 1.5,
        "attempt_started": T0 + 2.0,
        "entered": T0 + 5.0,
        "import_seconds": 4.0,
        "resumed_at": T0 + 12.0,
        "killed_at_step": 130,
        "resumed_from_step": 125,
        "steps_redone_driver": 4,
    }
    fields.update(over)
    return rb.Recovery(**fields)  # type: ignore[arg-type]


def _report(**over: object) -> rb.RecoveryReport:
    fields: dict[str, object] = {
        "params": 9_999_279,
        "batch": 64,
        "steps_per_epoch": 80,
        "epochs": 3,
        "interval": "60s",
        "every": (None, 60.0),
        "plain": rb.FitRun("no checkpoints", 80.0, 240, (), 95.0),
        "checkpointed": rb.FitRun("checkpoints", 82.0, 240, (0.5, 0.7), 97.0),
        "resumed": rb.FitRun("killed + resumed", 30.0, 110, (0.6,), 130.0),
        "recovery": _recovery(),
        "load": {"start": (1.0, 2.0, 3.0), "end": (2.0, 2.0, 3.0)},
    }
    fields.update(over)
    return rb.RecoveryReport(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("params", [1e5, 1e6, 10e6, 50e6])
def test_hidden_width_gives_the_asked_size_within_one_width(params: float) -> None:
    width = rb.hidden_width(params)
    assert abs(rb.mlp_params(width) - params) <= rb.mlp_params(width + 1) - rb.mlp_params(width)
    assert rb.mlp_params(rb.hidden_width(10e6)) == 9_999_279  # 256 -> 3031 -> 3031 -> 10


def test_hidden_width_refuses_a_size_without_a_hidden_unit() -> None:
    with pytest.raises(ValueError, match="too small for a 256-input MLP"):
        rb.hidden_width(10)


def test_recovery_figures_and_phases_add_up() -> None:
    rec = _recovery()
    assert rec.total_seconds == pytest.approx(12.0)
    assert rec.without_import == pytest.approx(8.0)
    assert rec.steps_redone == 5
    phases = dict(rec.phases())
    assert list(phases.values()) == pytest.approx([1.5, 0.5, 3.0, 4.0, 3.0])
    assert sum(phases.values()) == pytest.approx(rec.total_seconds)
    assert _recovery(resumed_from_step=None).steps_redone is None


def test_recovery_refuses_times_out_of_order_and_an_impossible_import() -> None:
    with pytest.raises(ValueError, match="out of order"):
        _recovery(entered=T0 - 1.0)
    with pytest.raises(ValueError, match=r"import_seconds 9\.0 outside"):
        _recovery(import_seconds=9.0)


def test_fit_run_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="fit_seconds must be > 0"):
        rb.FitRun("x", 0.0, 10)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        rb.FitRun("x", 1.0, 0)
    assert rb.FitRun("x", 2.0, 4).step_seconds == 0.5


def test_checkpoint_figures() -> None:
    r = _report()
    assert r.overhead == pytest.approx(2.0 / 80.0)
    assert r.write_share == pytest.approx(1.2 / 82.0)
    assert r.mean_checkpoint_seconds == pytest.approx(0.6)
    assert r.steady_share == pytest.approx(0.6 / 60.6)
    assert r.interval_steps == pytest.approx(60.0 / (80.0 / 240))
    steps = _report(interval="100", every=(100, None))
    assert steps.steady_share is None and steps.interval_steps == 100.0
    none = _report(checkpointed=rb.FitRun("checkpoints", 82.0, 240))
    assert none.mean_checkpoint_seconds is None and none.write_share == 0.0


def test_a_report_needs_the_recovery_or_why_not_and_one_interval() -> None:
    with pytest.raises(ValueError, match="why there are none"):
        _report(recovery=None)
    with pytest.raises(ValueError, match="why there are none"):
        _report(skipped="because")
    with pytest.raises(ValueError, match=r"every is \(steps, None\) or \(None, seconds\)"):
        _report(every=(None, None))


def test_markdown_lists_every_figure_with_targets() -> None:
    text = rb.report_markdown(_report())
    assert text.startswith("# tfyarn recovery benchmark\n\n2 workers, `allreduce`")
    assert "MLP of 9,999,279 parameters" in text
    for line in [
        "| (a) fit, checkpoints off | 80.0 s (240 steps, 333 ms/step) |  |  |",
        "| checkpoints written in (b) (the final one included) | 2 |  |  |",
        "| seconds per checkpoint (rank 0 write) | 0.60 s (max 0.70 s) |  |  |",
        "| checkpoint overhead (b - a) / a | 2.5 % | <= 5.0 % | met |",
        "| checkpoint writes / fit time of (b) | 1.5 % |  |  |",
        "| a long run's share at one write per 60s | 1.0 % |  |  |",
        "| (c) kill -> first step of attempt 2, all included | 12.0 s |  |  |",
        "|   -> TensorFlow + Keras imported | 4.0 s |  |  |",
        "| recovery without the TensorFlow import | 8.0 s | <= 15 s | met |",
        "| killed at step / resumed from step | 130 / 125 |  |  |",
        "| steps redone (marks; driver's heartbeat figure) | 5 (4) |  |  |",
        "| steps redone at most (one interval, 60s) | 180 |  |  |",
        "| fit of attempt 2 | 30.0 s (110 steps) |  |  |",
    ]:
        assert line in text.splitlines(), line


def test_missed_targets_say_missed() -> None:
    slow = _report(
        checkpointed=rb.FitRun("checkpoints", 90.0, 240, (5.0,)),
        recovery=_recovery(resumed_at=T0 + 25.0),
    )
    lines = rb.report_markdown(slow).splitlines()
    assert "| checkpoint overhead (b - a) / a | 12.5 % | <= 5.0 % | missed |" in lines
    assert "| recovery without the TensorFlow import | 21.0 s | <= 15 s | missed |" in lines


def test_a_skipped_kill_says_why_in_the_table() -> None:
    r = _report(recovery=None, resumed=None, skipped="skipped (--skip-kill)")
    assert (
        "| (c) kill of worker:1 mid-fit | not measured: skipped (--skip-kill) |  |  |"
        in rb.report_markdown(r).splitlines()
    )
    assert rb.report_json(r)["recovery"] is None


def test_json_and_markdown_files(tmp_path: Path) -> None:
    paths = rb.write_outputs(_report(), tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["config"]["params"] == 9_999_279 and data["targets"] == rb.TARGETS
    assert data["checkpoint"]["overhead"] == pytest.approx(0.025)
    assert data["recovery"]["without_import"] == pytest.approx(8.0)
    assert data["recovery"]["phases"]["-> TensorFlow + Keras imported"] == pytest.approx(4.0)
    assert data["runs"]["checkpointed"]["checkpoint_seconds"] == [0.5, 0.7]
    assert paths["markdown"].read_text() == rb.report_markdown(_report())


def _args(**over: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    rb.add_arguments(parser)
    args = parser.parse_args([])
    for k, v in over.items():
        setattr(args, k, v)
    return args


def test_bad_options_are_named() -> None:
    with pytest.raises(ConfigError) as caught:
        rb.run(_args(epochs=0, kill_at=1.5, checkpoint_every="soon"))
    text = str(caught.value)
    assert text.startswith("tfyarn bench recovery: --epochs must be >= 1, not 0; ")
    assert "--kill-at is a share of the steps between 0 and 1, not 1.5" in text
    assert "checkpoint_every='soon'" in text


def test_registered_as_tfyarn_bench_recovery() -> None:
    from tfyarn.cli.bench import BENCHMARKS, summary

    assert BENCHMARKS["recovery"] == "benchmarks.recovery_bench"
    assert summary(rb.__doc__, "recovery") == (
        "Recovery from a killed worker, and what checkpoints cost."
    )
    args = _args()
    assert (args.params, args.epochs, args.steps_per_epoch, args.checkpoint_every) == (
        10e6,
        3,
        160,
        None,
    )


def _victim_marks(marks: Path, pid: int, step: int) -> None:
    marks.mkdir(exist_ok=True)
    (marks / "worker-1.a1.step").write_text(f"{pid} {step}")


def test_the_killer_waits_for_the_step_and_a_checkpoint_and_spares_a_finished_fit(
    tmp_path: Path,
) -> None:
    import subprocess
    import time

    victim = subprocess.Popen(["sleep", "60"])
    try:
        marks, ckpt = tmp_path / "marks", tmp_path / "ckpt"
        ckpt.mkdir()
        killer = rb.Killer(marks, ckpt, kill_step=5, total_steps=10)
        killer.start()
        _victim_marks(marks, victim.pid, 7)  # past the step, but no checkpoint yet
        time.sleep(0.3)
        assert victim.poll() is None and killer.killed_at is None
        (ckpt / "ckpt-000000000006.npz").write_bytes(b"")
        assert victim.wait(timeout=10) == -9
        assert killer.killed_at is not None
    finally:
        victim.kill()
        victim.wait()
    spared = subprocess.Popen(["sleep", "60"])
    try:
        late = rb.Killer(marks, ckpt, kill_step=5, total_steps=10)
        _victim_marks(marks, spared.pid, 10)  # the fit's last step: its final checkpoint
        late.start()
        time.sleep(0.3)
        assert spared.poll() is None and late.killed_at is None
        late.stop.set()
    finally:
        spared.kill()
        spared.wait()
