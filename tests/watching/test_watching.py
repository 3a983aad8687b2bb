"""Watching a real job (issue 18): TensorBoard, Prometheus metrics and the history.

One Keras ``model.fit`` job with the ring all-reduce on the local Spark cluster (two
executor processes; the README's examples/keras_fit_allreduce.py), run with
``tensorboard=True``, a metrics port and a history folder.
While it runs the test scrapes ``/metrics`` (prometheus-client's own parser) until the
steps and the exchange's byte counters have moved, and asks TensorBoard, through the
driver's link, for its runs. The job's chief then waits for the test's go (a file) so
that TensorBoard is looked at while it still serves. Afterwards: the exchange's scalars
are checked against the bytes a ring all-reduce of this model must send per step, the
TensorBoard and its link are gone, and ``tfyarn history`` lists, shows and plots the job.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pyarrow as pa
import pytest
from prometheus_client.parser import text_string_to_metric_families

import tfyarn
from tfyarn.cluster.history import find_history
from tfyarn.yarn.devcluster import free_ports

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import keras_fit_allreduce as example

cloudpickle.register_pickle_by_value(example)
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.integration

#: Float32 weights of example.build_model(): 64-128-64-10 dense layers with biases.
MODEL_BYTES = 4 * (64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10)
DEADLINE = 150.0  # seconds any one wait of this test may take


def _watched_train_fn(release: str) -> Any:
    """The example's train_fn; the chief then waits (bounded) for the test's go."""
    train = example.make_train_fn(epochs=20, batch_size=32, learning_rate=3e-3)

    def fn(ctx: tfyarn.NodeContext) -> Any:
        out = train(ctx)
        if ctx.is_chief:
            waited = time.monotonic()
            while not Path(release).exists() and time.monotonic() - waited < DEADLINE:
                time.sleep(0.2)
            out["log_dir"] = ctx.log_dir
        return out

    return fn


def _scrape(url: str) -> dict[tuple[str, str], float]:
    """``{(sample name, role): value}`` of one scrape (the job's own series keyed by "")."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            role = sample.labels.get("role", "")
            if sample.name == "tfyarn_role_state" and sample.value == 1.0:
                found[("state:" + sample.labels["state"], role)] = 1.0
            elif sample.name != "tfyarn_role_state":
                found[(sample.name, role)] = sample.value
    return found


def _until(what: str, check: Any, poll: float = 0.5) -> Any:
    begun = time.monotonic()
    last_error: BaseException | None = None
    while time.monotonic() - begun < DEADLINE:
        try:
            got = check()
            if got:
                return got
        except (OSError, ValueError, KeyError) as exc:
            last_error = exc
        time.sleep(poll)
    raise AssertionError(f"{what}: not within {DEADLINE:.0f} s (last error: {last_error!r})")


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorFlow wrote under ``folder``, read back with TensorFlow's reader."""
    import tensorflow as tf

    found: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor))
                found.setdefault(value.tag, []).append((event.step, number))
    return found


def _tensorboard_processes(log_dir: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    return [p for p in ps.stdout.splitlines() if "tensorboard.main" in p and log_dir in p]


def test_a_job_is_watched_while_it_runs_and_afterwards(spark: Any, tmp_path: Path) -> None:
    x_train, _, y_train, _ = example.load_split()
    df = spark.createDataFrame(
        pa.table(
            {
                "x": pa.FixedSizeListArray.from_arrays(pa.array(x_train.reshape(-1)), 64),
                "y": pa.array(y_train),
            }
        )
    )
    release, history_dir, port = tmp_path / "release", tmp_path / "history", free_ports(1)[0]
    box: dict[str, Any] = {}

    def job() -> None:
        try:
            box["result"] = tfyarn.run(
                spark,
                _watched_train_fn(str(release)),
                workers=2,
                chief=False,
                strategy="allreduce",
                transport="tcp",
                data=df,
                progress=False,
                model_dir=str(tmp_path / "model"),
                tensorboard=True,
                metrics_port=port,
                history_dir=str(history_dir),
                history_interval=0.5,
                heartbeat_interval=0.5,  # and the exchange's scalars: training takes seconds
                timeout=600,
            )
        except BaseException as exc:
            box["error"] = exc

    runner = threading.Thread(target=job, daemon=True)
    runner.start()
    try:
        metrics = f"http://127.0.0.1:{port}/metrics"
        first = _until("worker:0 reporting steps", lambda: _scrape(metrics).get(
            ("tfyarn_role_step", "worker:0")))  # fmt: skip
        later = _until(
            "worker:0's step and exchange bytes moving",
            lambda: (
                (m := _scrape(metrics))[("tfyarn_role_step", "worker:0")] > first
                and m.get(("tfyarn_role_exchange_sent_bytes_total", "worker:0"), 0) > MODEL_BYTES
                and m
            ),
        )
        assert later.get(("state:running", "worker:0")) == 1.0, later
        # worker:1 may have finished already: the chief waits for the test's go.
        assert 1.0 in (
            later.get(("state:running", "worker:1")),
            later.get(("state:done", "worker:1")),
        )
        assert later[("tfyarn_job_attempt", "")] == 1.0
        assert later[("tfyarn_job_attempts_total", "")] == 0.0
        assert later[("tfyarn_role_heartbeat_age_seconds", "worker:1")] < 30
        assert later[("tfyarn_role_samples_per_second", "worker:0")] > 0
        assert later[("tfyarn_role_restarts_total", "worker:1")] == 0.0

        # TensorBoard, through the driver's link (its address is known before the roles).
        link = _until("the TensorBoard link", lambda: _link_of(history_dir))
        runs = _until(
            "TensorBoard listing worker 0's training run",
            lambda: "worker_0/train" in (r := _runs(link)) and r,
            poll=2.0,
        )
        assert any(run.startswith("worker_") for run in runs), runs
    finally:
        release.touch()
        runner.join(timeout=DEADLINE)
    assert "error" not in box, box.get("error")
    result = box["result"]
    assert result.tensorboard_url == link
    # The README example itself trained (what test_exchange_launcher checks for sync_ps).
    value = result.value
    assert result.transport == "tcp" and value["workers"] == 2
    assert value["test_accuracy"] >= 0.9, value
    assert value["history"]["loss"][-1] < value["history"]["loss"][0]
    assert Path(value["model_path"]).is_file()

    # The exchange's own scalars: a ring all-reduce of n=2 sends each rank the model's
    # size once per step (2 (n - 1) / n of it), so a broken or skipped exchange shows.
    # Over the whole run (the steps as the chief last reported them; the initial
    # broadcast and the epoch-end metric averages add a fraction of a percent):
    scalars = _scalars(Path(result.value["log_dir"]) / "exchange")
    last_step, megabytes = scalars["exchange/megabytes_sent"][-1]
    assert megabytes / last_step == pytest.approx(MODEL_BYTES / 1e6, rel=0.01)
    # Per window: the step is reported every 10 batches, the bytes exactly.
    per_step = [v for _, v in scalars.get("exchange/megabytes_sent_per_step", [])]
    assert per_step, scalars
    assert np.median(per_step) == pytest.approx(MODEL_BYTES / 1e6, rel=0.1), per_step
    assert all(0.0 <= v <= 1.0 for _, v in scalars["exchange/waiting_share"])

    # Stopped with the job: no TensorBoard left, the link closed.
    assert _tensorboard_processes(result.log_dir) == []
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(link, timeout=5)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)

    # The history: the run, its samples over time, and the CLI on it.
    history = find_history(str(history_dir), result.job_id)
    assert history.status == "succeeded"
    assert [a["number"] for a in history.attempts] == [1]
    _, values = history.series("step")["worker:0"]
    assert len(values) >= 2 and values[-1] > values[0], values
    cli = [sys.executable, "-m", "tfyarn.cli.main", "history", "--dir", str(history_dir)]
    listed = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=True)
    assert result.job_id[:8] in listed.stdout and "succeeded" in listed.stdout
    shown = subprocess.run(
        [*cli, "show", result.job_id, "--json"], capture_output=True, text=True, timeout=60
    )
    events = [json.loads(line)["event"] for line in shown.stdout.splitlines()]
    assert events[0] == "job" and events[-1] == "end" and "roles" in events
    png = tmp_path / "job.png"
    subprocess.run([*cli, "plot", result.job_id[:15], "-o", str(png)], check=True, timeout=120)
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.shape[0] > 100 and image.shape[1] > 100


def _link_of(history_dir: Path) -> str | None:
    """The TensorBoard link the run wrote in its history's first event."""
    files = list(history_dir.glob("*.jsonl"))
    if len(files) != 1:
        return None
    first = json.loads(files[0].read_text().splitlines()[0])
    return str(first["tensorboard_url"]) if first.get("tensorboard_url") else None


def _runs(link: str) -> list[str]:
    """TensorBoard's runs (``/data/runs``), asked through the driver's redirecting link."""
    with urllib.request.urlopen(link + "data/runs", timeout=10) as reply:
        return list(json.loads(reply.read()))
