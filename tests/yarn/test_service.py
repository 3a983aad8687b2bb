"""Service mode end to end on the real dev YARN (Services API) and a real Spark cluster.

One service for the module, launched with ``tfyarn service launch`` from a YAML spec: a
ps (anti-affinity, port readiness, restart policy ALWAYS, the environment archive
localised), TensorBoard, and standby workers at zero. Two Keras jobs on the session's
local Spark cluster attach to it by name through the ResourceManager:

1. the first trains from scratch and writes TensorBoard logs, which the service's
   TensorBoard then lists;
2. the second continues the model the service kept; meanwhile the test SIGKILLs the ps
   process (YARN restarts the container, the ps reloads its latest snapshot, the trainers
   reconnect) and flexes the standby workers up and down. The accounting shows that
   exactly the acknowledged updates after the last snapshot were lost, and the job
   finishes.

Then ``stop`` (the ps takes a last snapshot: nothing lost) and ``destroy``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import pyarrow as pa
import pytest
import yaml

import tfyarn
from tfyarn.errors import ConfigError
from tfyarn.service.attach import ServiceAttachment, ServiceConnector, attach
from tfyarn.service.client import ServicesClient, ready_counts
from tfyarn.service.standby import standby_reports
from tfyarn.service.state import latest_snapshot, ps_dir
from tfyarn.yarn.devcluster import free_ports

from .conftest import REPO, TFYARN, DevYarnFixture

pytestmark = pytest.mark.yarn

sys.path.insert(0, str(REPO / "examples"))
import keras_fit_allreduce as example  # noqa: E402

cloudpickle.register_pickle_by_value(example)
cloudpickle.register_pickle_by_value(sys.modules[__name__])

NAME = "tfyarn-test-ps"
SNAPSHOT_S = 2.0


@dataclass
class Service:
    """The module's service and what the tests need to reach it."""

    client: ServicesClient
    attachment: ServiceAttachment
    state_dir: Path
    logdir: Path
    env: dict[str, str]
    launch_output: str

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [TFYARN, "service", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )

    def hello(self) -> dict[str, Any]:
        """What ps-0 says of itself now (pid, update counters, restored snapshot)."""
        conn = ServiceConnector(attach(NAME, rm_url=self.client.rm_url), "test-probe")
        conn.connect("ps-0").close()
        return conn.hellos["ps-0"][-1]


@pytest.fixture(scope="module")
def service(
    dev_yarn: DevYarnFixture, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("service")
    ps_port, tb_port = free_ports(2)
    spec = {
        "name": NAME,
        "environment": "${TFYARN_ENV_ARCHIVE}",
        "state_dir": str(root / "state"),
        "logdir": str(root / "logs"),
        "ps": {"port": ps_port, "memory_mb": 1024, "snapshot_interval_s": SNAPSHOT_S},
        "tensorboard": {"enabled": True, "port": tb_port, "memory_mb": 768},
        "standby": {"instances": 0, "memory_mb": 1536},
    }
    spec_file = root / "service.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    env = dict(dev_yarn.env)
    client = ServicesClient(dev_yarn.state.rm_web_url)
    started = time.monotonic()
    launch = subprocess.run(
        [TFYARN, "service", "launch", str(spec_file), "--wait", "400"],
        capture_output=True,
        text=True,
        env=env,
        timeout=500,
    )
    try:
        assert launch.returncode == 0, launch.stdout + launch.stderr
        print(f"\nservice launched and STABLE in {time.monotonic() - started:.1f} s")
        yield Service(
            client=client,
            attachment=attach(NAME, rm_url=client.rm_url),
            state_dir=root / "state",
            logdir=root / "logs",
            env=env,
            launch_output=launch.stdout,
        )
    finally:
        if client.exists(NAME):
            client.destroy(NAME)


def test_launch_status_and_endpoints(service: Service) -> None:
    out = service.launch_output
    assert "Application ID: application_" in out
    status = service.cli("status", NAME)
    assert status.returncode == 0, status.stderr
    text = status.stdout
    assert f"service {NAME}: STABLE" in text
    assert "ps: 1/1 READY" in text and "tensorboard: 1/1 READY" in text
    assert "standby: 0/0 READY" in text
    port = service.attachment.port
    assert f"endpoint ps-0: tcp://127.0.0.1:{port}" in text
    raw = json.loads(service.cli("status", NAME, "--json").stdout)
    ps = next(c for c in raw["components"] if c["name"] == "ps")
    assert ps["restart_policy"] == "ALWAYS"
    assert ps["placement_policy"]["constraints"][0]["type"] == "ANTI_AFFINITY"
    # The environment: an ARCHIVE file localised as PUBLIC (the HDFS copy tfyarn
    # published is readable by all), so the NodeManager reuses the copy it unpacked for
    # the session's Spark applications instead of unpacking 1-2 GB for this one.
    (env_file,) = ps["configuration"]["files"]
    assert (env_file["type"], env_file["dest_file"]) == ("ARCHIVE", "lib")
    assert env_file["visibility"] == "PUBLIC" and env_file["src_file"].startswith("hdfs://")
    # The ps runs the localised environment's Python from the container's ./lib.
    hello = service.hello()
    exe = os.readlink(f"/proc/{hello['pid']}/exe")
    cwd = os.readlink(f"/proc/{hello['pid']}/cwd")
    assert "nm-local" in cwd and Path(cwd, "lib", "bin", "python").exists(), (exe, cwd)
    assert (service.state_dir / "secret").stat().st_mode & 0o777 == 0o600
    bad = service.cli("flex", "no-such-service", "ps", "1")
    assert bad.returncode == 1 and "tfyarn: error:" in bad.stderr


# -- the training jobs ----------------------------------------------------------------------


def _digits(spark: Any) -> Any:
    x_train, _, y_train, _ = example.load_split()
    return spark.createDataFrame(
        pa.table(
            {
                "x": pa.FixedSizeListArray.from_arrays(pa.array(x_train.reshape(-1)), 64),
                "y": pa.array(y_train),
            }
        )
    )


def make_train_fn(out_dir: str, epochs: int, stop_file: str = "", logdir: str = "") -> Any:
    """Keras fit under the downpour strategy; writes each trainer's ps accounting.

    With ``stop_file``, the fit runs (batch by batch, slowed down) until that file exists,
    bounded by ``epochs`` and 10 minutes: the test decides when the job may end.
    """

    def train(ctx: tfyarn.NodeContext) -> dict[str, Any]:
        import keras

        strategy = ctx.strategy()
        model = example.build_model()
        model.compile(
            optimizer=strategy.distributed_optimizer(keras.optimizers.Adam(3e-3)),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        box: dict[str, Any] = {}
        deadline = time.monotonic() + 600

        class Account(keras.callbacks.Callback):
            def on_train_begin(self, logs: Any = None) -> None:
                box["client"] = strategy.algorithm.client

            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                if stop_file:
                    time.sleep(0.05)
                    if os.path.exists(stop_file) or time.monotonic() > deadline:
                        self.model.stop_training = True

        callbacks = [*strategy.callbacks(average_metrics=False), Account()]
        if logdir and ctx.is_chief:
            callbacks.append(keras.callbacks.TensorBoard(logdir))
        history = model.fit(
            ctx.dataset(32, epochs=epochs, features="x", label="y"),
            epochs=epochs,
            steps_per_epoch=ctx.steps_per_epoch(32),
            callbacks=callbacks,
            verbose=0,
        )
        client = box["client"]
        record = {
            "task": ctx.task_id,
            "acked": client.acked,
            "reconnects": client.reconnects,
            "loss": history.history["loss"],
        }
        with open(os.path.join(out_dir, f"{ctx.task_id.replace(':', '-')}.json"), "w") as f:
            json.dump(record, f)
        return record

    return train


def _records(out_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))]


def _run(spark: Any, service: Service, train_fn: Any) -> tfyarn.RunResult:
    return tfyarn.run(
        spark,
        train_fn,
        workers=2,
        chief=False,
        ps=0,
        strategy="downpour",
        transport="tcp",
        data=_digits(spark),
        service=service.attachment,
        progress=False,
        timeout=900,
    )


def _wait(what: str, check: Any, timeout: float, poll: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _bucket_totals(records: list[dict[str, Any]], key: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in records:
        for b, n in r[key].items():
            out[int(b)] = out.get(int(b), 0) + int(n)
    return out


def test_jobs_share_the_model_and_survive_a_ps_restart_and_flexing(
    spark: Any, service: Service, tmp_path: Path
) -> None:
    # Job 1: from scratch, with TensorBoard logs under the service's logdir.
    job1 = tmp_path / "job1"
    job1.mkdir()
    first = _run(spark, service, make_train_fn(str(job1), 3, logdir=str(service.logdir / "job1")))
    assert first.status == "succeeded"
    records1 = _records(job1)
    assert len(records1) == 2 and all(not r["reconnects"] for r in records1)
    after_job1 = {int(b): n for b, n in service.hello()["updates"].items()}
    assert after_job1 == _bucket_totals(records1, "acked")  # every acknowledged update held
    loss1 = records1[0]["loss"]
    assert loss1[-1] < loss1[0]

    # The service's TensorBoard serves the job's event files.
    status = service.client.status(NAME)
    tb = next(c for c in status["components"] if c["name"] == "tensorboard")
    tb_ip = tb["containers"][0]["ip"]
    tb_port = int(status["configuration"]["properties"]["tfyarn.tensorboard.port"])

    def runs() -> bool:
        with urllib.request.urlopen(f"http://{tb_ip}:{tb_port}/data/runs", timeout=5) as r:
            return any(run.startswith("job1") for run in json.loads(r.read()))

    _wait("TensorBoard to list job1's run", runs, timeout=90, poll=2)

    # Job 2 continues the model; the test kills the ps and flexes standby meanwhile.
    job2 = tmp_path / "job2"
    job2.mkdir()
    stop_file = tmp_path / "stop"
    outcome: dict[str, Any] = {}

    def run_job2() -> None:
        try:
            outcome["result"] = _run(spark, service, make_train_fn(str(job2), 200, str(stop_file)))
        except BaseException as exc:
            outcome["error"] = exc

    job = threading.Thread(target=run_job2, name="job2")
    job.start()
    try:
        folder = ps_dir(service.state_dir, 0)
        before = after_job1[0]

        def snapshot_with_job2_updates() -> int | None:
            snap, _ = latest_snapshot(folder)
            return snap.seq if snap is not None and snap.updates.get(0, 0) > before else None

        seq = _wait("a snapshot with job 2's updates", snapshot_with_job2_updates, timeout=300)
        time.sleep(SNAPSHOT_S / 2)  # some acknowledged updates land after it
        old = service.hello()
        os.kill(old["pid"], signal.SIGKILL)
        killed = time.monotonic()

        # YARN restarts the container; the new ps restored the latest snapshot.
        def restarted() -> dict[str, Any] | None:
            try:
                hello = service.hello()
            except Exception:
                return None
            return hello if hello["pid"] != old["pid"] else None

        new = _wait("YARN to restart the ps", restarted, timeout=180, poll=1)
        print(f"\nps restarted by YARN in {time.monotonic() - killed:.1f} s")
        assert new["restored_seq"] >= seq

        # Flex the standby workers up and down while job 2 is attached.
        assert service.cli("flex", NAME, "standby", "1", "--wait", "300").returncode == 0
        report = _wait(
            "the standby worker's report",
            lambda: [r for r in standby_reports(service.state_dir) if r["ps_reachable"]],
            timeout=300,
            poll=2,
        )
        assert report[0]["ps_reachable"] == {"ps-0": True}
        assert job.is_alive(), "job 2 ended before the flex finished"
        down = service.cli("flex", NAME, "standby", "0")
        assert down.returncode == 0, down.stderr
        _wait(
            "standby to flex down to 0",
            lambda: ready_counts(service.client.status(NAME)).get("standby") == 0,
            timeout=120,
        )
        _wait("the standby report to go", lambda: not standby_reports(service.state_dir), 60)
        assert job.is_alive(), "job 2 ended before the flex down finished"
    finally:
        stop_file.write_text("done")
        job.join(timeout=600)
    assert not job.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].status == "succeeded"

    records2 = _records(job2)
    assert len(records2) == 2
    # Job 2 started from job 1's model: its first epoch is already as good as job 1's last.
    assert records2[0]["loss"][0] < loss1[0]
    # Every trainer lost its connection once and reconnected to the restored ps.
    assert all(len(r["reconnects"]) == 1 for r in records2), records2
    restored = {int(b): n for b, n in new["restored_updates"].items()}
    acked = _bucket_totals(records2, "acked")
    at_break = _bucket_totals([r["reconnects"][0] for r in records2], "acked_at_break")
    final = {int(b): n for b, n in service.hello()["updates"].items()}
    for b in final:
        held_at_kill = after_job1[b] + at_break[b]  # acknowledged before the kill
        lost = held_at_kill - restored[b]
        print(f"bucket {b}: {acked[b]} updates acknowledged in job 2, {lost} lost by the kill")
        assert 0 <= lost < at_break[b]
        assert restored[b] > after_job1[b]  # the snapshot had job 2's updates
        # Nothing else is missing: only the acknowledged updates after the last snapshot.
        assert final[b] == after_job1[b] + acked[b] - lost

    # An orderly stop snapshots everything: nothing lost.
    stop = service.cli("stop", NAME)
    assert stop.returncode == 0, stop.stderr
    _wait(
        "the service to stop",
        lambda: service.client.status(NAME).get("state") == "STOPPED",
        timeout=120,
    )
    snap, _ = latest_snapshot(ps_dir(service.state_dir, 0))
    assert snap is not None and snap.updates == final
    # YARN stops the containers (SIGTERM, then SIGKILL after 2 s): nothing is left.
    _wait("the ps processes to exit", lambda: not [p for p in _ps_processes() if NAME in p], 60)
    with pytest.raises(ConfigError, match=f"service {NAME} is STOPPED"):
        attach(NAME, rm_url=service.client.rm_url)  # a job is told to start it first
    destroy = service.cli("destroy", NAME)
    assert destroy.returncode == 0, destroy.stderr
    assert not service.client.exists(NAME)


def _ps_processes() -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "tfyarn.service" in cmd:
                out.append(cmd.replace("\0", " "))
    return out
