"""``tfyarn bench links`` end to end, small: two namespaces, a tbf-limited veth, two ranks.

What it checks is what the benchmark's figures rest on: the limit holds (one connection's
stream stays under the tbf rate), the compressed all-reduce sends exactly half the bytes
of the float32 one, and nothing is left behind (namespaces, processes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_a_limited_link_and_half_the_bytes(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test creates network namespaces and qdiscs: it needs root")
    before = _namespaces()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.link_bench", "--rates", "200mbit",
         "--compressions", "none,bf16", "--elements", "1e6", "--reps", "1",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["compression"]: r for r in json.loads((tmp_path / "links.json").read_text())["rows"]}
    # 1M float32 between 2 ranks: each sends half the buffer twice (4 MB); bf16 half that
    assert rows["none"]["bytes_sent"] == 4_000_000
    assert rows["bf16"]["bytes_sent"] == 2_000_000
    assert 0 < rows["none"]["stream_gbit"] <= 0.2 * 1.05, rows["none"]
    assert (tmp_path / "links.md").read_text().count("| 200mbit |") == 2
    assert _namespaces() == before
