"""``tfyarn submit`` end to end on a local Spark cluster: profile, passthrough options,
``--output-json``, and InputMode.FILES sharding (in the submitted job)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.integration

JOB = Path(__file__).parent / "jobs" / "files_job.py"
TFYARN = str(Path(sys.executable).parent / "tfyarn")


def test_submit_runs_a_files_job_and_writes_the_result(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):  # 4 files of 10, 20, 30, 40 rows
        values = np.arange(10 * (i + 1), dtype=np.float64) + 1000 * i
        pq.write_table(pa.table({"v": values}), data / f"part-{i}.parquet")
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [
            TFYARN,
            "submit",
            "--profile",
            "local-cluster",
            "--workers",
            "1",
            "--output-json",
            str(out),
            "--driver-memory",
            "1g",
            str(JOB),
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["status"] == "succeeded"
    assert report["submit"]["exit_code"] == 0
    assert "--driver-memory" in report["submit"]["argv"]
    # two trainers (chief + worker:0): files 0,2 and 1,3
    assert report["value"] == {"files": ["part-0.parquet", "part-2.parquet"], "rows": 40}
    assert report["metrics"]["worker:0"]["files"] == ["part-1.parquet", "part-3.parquet"]
    assert report["metrics"]["worker:0"]["rows"] == 60
    assert set(report["roles"]) == {"chief:0", "worker:0"}
    assert report["wall_time"] > 0 and report["startup_time"] > 0
    # the role plan, printed by the driver before the job starts
    assert (
        "tfyarn: 2 roles, 2 executors needed (one per role): chief:0, worker:0; no strategy; "
        "trainers (they get the data): chief:0, worker:0\n" in proc.stdout
    )


def test_submit_reports_a_script_that_fails_before_tfyarn_runs(tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text("raise SystemExit('broken before tfyarn.run')\n")
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [TFYARN, "submit", "--workers", "1", "--output-json", str(out), str(script)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    report = json.loads(out.read_text())
    assert report["status"] == "failed"
    assert "broken before tfyarn.run" in report["output_tail"]


def test_submit_dry_run_and_unknown_profile() -> None:
    proc = subprocess.run(
        [TFYARN, "submit", "--dry-run", "--ps", "1", "x.py", "--a"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "local-cluster[4,1,1024]" in proc.stdout and proc.stdout.rstrip().endswith("x.py --a")
    proc = subprocess.run(
        [TFYARN, "submit", "--profile", "nope", "x.py"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert "no profile named 'nope'" in proc.stderr


def test_submit_help_exits_0_and_refusals_come_before_spark() -> None:
    for flag in ("--help", "-h"):
        proc = subprocess.run([TFYARN, "submit", flag], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("usage: tfyarn submit ") and proc.stderr == ""
    started = time.monotonic()
    proc = subprocess.run(
        [TFYARN, "submit", "--workers", "2", "--conf", "spark.executor.instances=1", "x.py"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr == (
        "tfyarn: error: spark.executor.instances=1 is fewer than the job's 3 roles (one "
        "executor each); leave it to tfyarn submit, which sets 3\n"
    )
    assert time.monotonic() - started < 15  # no Spark started
