"""GPU requests through YARN without GPUs: Spark's executor GPU amount becomes a
``yarn.io/gpu`` allocation of the real dev YARN, and each task is handed its GPU."""

from __future__ import annotations

import getpass
import re
import urllib.request
from pathlib import Path
from xml.etree import ElementTree

import pytest

from .conftest import APPS, DevYarnFixture

pytestmark = pytest.mark.yarn


def test_executor_gpu_amount_is_allocated_as_yarn_io_gpu(
    dev_yarn: DevYarnFixture, tmp_path: Path
) -> None:
    profile = tmp_path / "yarn-gpu.conf"
    base = (Path(__file__).resolve().parents[2] / "conf" / "yarn-client.conf").read_text()
    # The session's archive (envArchive auto): the NodeManager has no Python of its own.
    profile.write_text(
        base
        + "spark.executor.resource.gpu.amount 1\n"
        + f"spark.executor.resource.gpu.discoveryScript {APPS / 'stand_in_gpus.sh'}\n"
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
    seconds = _resource_seconds(dev_yarn.state.rm_web_url, run.app_id)
    assert seconds.get("yarn.io/gpu", 0) > 0, seconds
    assert re.search(r"tfyarn: YARN application application_\d+_\d+", run.output)


def _resource_seconds(rm_url: str, app_id: str) -> dict[str, int]:
    """The application's resourceSecondsMap, read as XML.

    Hadoop 3.4's JSON (Jersey 1) writes the map as an object with a repeated "entry" key,
    which JSON parsers collapse to the last entry; the XML lists every entry.
    """
    req = urllib.request.Request(
        f"{rm_url}/ws/v1/cluster/apps/{app_id}?user.name={getpass.getuser()}",
        headers={"Accept": "application/xml"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        root = ElementTree.fromstring(resp.read())
    found = root.find("resourceSecondsMap")
    entries = found.findall("entry") if found is not None else []
    return {e.findtext("key", ""): int(e.findtext("value", "0")) for e in entries}
