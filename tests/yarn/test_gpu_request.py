"""GPU requests through YARN without GPUs: Spark's executor GPU amount becomes a
``yarn.io/gpu`` allocation of the real dev YARN, and each task is handed its GPU."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import APPS, DevYarnFixture

pytestmark = pytest.mark.yarn


def test_executor_gpu_amount_is_allocated_as_yarn_io_gpu(
    dev_yarn: DevYarnFixture, tmp_path: Path
) -> None:
    profile = tmp_path / "yarn-gpu.conf"
    base = (Path(__file__).resolve().parents[2] / "conf" / "yarn-client.conf").read_text()
    profile.write_text(
        base.replace("spark.tfyarn.yarn.envArchive            auto", "")
        + "spark.executor.resource.gpu.amount 1\n"
        + f"spark.executor.resource.gpu.discoveryScript {APPS / 'stand_in_gpus.sh'}\n"
        # Nothing here needs TensorFlow: the local venv's Python is enough (same host).
        + "spark.tfyarn.yarn.envArchive none\n"
    )
    run = dev_yarn.submit(
        ["--profile", str(profile), "--workers", "1", str(APPS / "gpu_probe.py")], timeout=600
    )
    assert run.returncode == 0, run.output[-5000:]
    # tfyarn submit added the task amount (one task, one role, per executor).
    assert "gpu-probe addresses=[('0',), ('0',)]" in run.output, run.output[-3000:]
    assert run.app_id is not None
    report = dev_yarn.final(run.app_id)
    assert (report.state, report.final_status) == ("FINISHED", "SUCCEEDED")
    # YARN accounted GPU-seconds to the application: the containers held yarn.io/gpu.
    entries = (report.raw.get("resourceSecondsMap") or {}).get("entry") or []
    entries = [entries] if isinstance(entries, dict) else entries
    seconds = {e["key"]: int(e["value"]) for e in entries}
    assert seconds.get("yarn.io/gpu", 0) > 0, report.raw.get("resourceSecondsMap")
    assert re.search(r"tfyarn: YARN application application_\d+_\d+", run.output)
