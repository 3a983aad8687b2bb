"""A real training step on a GPU, where this host has one (issue 13.4).

Spark's GPU scheduling is real here (a local cluster whose worker discovers the host's
GPUs with tfyarn's own discovery script, ``tfyarn/yarn/gpus.sh``): each role must see
exactly the GPU its task was assigned, through CUDA_VISIBLE_DEVICES set before
TensorFlow started, and its step on that GPU must equal a NumPy re-computation. The
YARN side of GPU requests (``yarn.io/gpu`` allocations) runs without GPUs in
tests/yarn/test_submit_yarn.py (the failing-role application asks for GPUs).

Skipped, with the reason, on a host without an NVIDIA GPU or with the CPU build of
TensorFlow (the default ``tf`` extra; the ``gpu`` extra installs the CUDA one).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[2]
JOB = Path(__file__).parent / "jobs" / "gpu_step.py"
TFYARN = str(Path(sys.executable).parent / "tfyarn")


def _why_no_gpu() -> str | None:
    """None where a GPU and a CUDA build of TensorFlow are here, else why not."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "no NVIDIA GPU on this host (nvidia-smi is not installed)"
    listed = subprocess.run(
        [smi, "--query-gpu=index", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if listed.returncode != 0 or not listed.stdout.strip():
        return f"nvidia-smi lists no GPU: {(listed.stderr or listed.stdout).strip()[-300:]}"
    built = subprocess.run(
        [sys.executable, "-c", "import tensorflow as tf; print(tf.test.is_built_with_cuda())"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if built.stdout.strip().splitlines()[-1:] != ["True"]:
        return (
            "this TensorFlow is a CPU build (the tf extra's tensorflow-cpu); "
            "install the gpu extra: pip install -e '.[gpu,dev]'"
        )
    return None


def _numpy_step() -> tuple[float, np.ndarray]:
    """The job's SGD step, in NumPy (float64): its loss and the updated kernel."""
    sys.path.insert(0, str(JOB.parent))
    import gpu_step

    x, y, kernel = (a.astype(np.float64) for a in gpu_step.inputs())
    residual = x @ kernel - y
    loss = float(np.mean(residual**2))
    grad = 2.0 * x.T @ residual / residual.size
    return loss, kernel - gpu_step.LEARNING_RATE * grad


def test_each_role_trains_on_exactly_the_gpu_spark_assigned(tmp_path: Path) -> None:
    why = _why_no_gpu()
    if why is not None:
        pytest.skip(why)
    profile = tmp_path / "local-gpus.conf"
    base = (REPO / "conf" / "local-cluster.conf").read_text()
    # One GPU per executor (and task); the worker finds the host's with the script that
    # YARN containers use.
    profile.write_text(
        base
        + "spark.worker.resource.gpu.amount 1\n"
        + f"spark.worker.resource.gpu.discoveryScript {REPO / 'tfyarn' / 'yarn' / 'gpus.sh'}\n"
        + "spark.executor.resource.gpu.amount 1\n"
        + "spark.task.resource.gpu.amount 1\n"
    )
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [TFYARN, "submit", "--profile", str(profile), "--workers", "0", "--chief",
         "--output-json", str(out), str(JOB)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    value = json.loads(out.read_text())["value"]
    # The task's one GPU, and only it, is what TensorFlow sees (as its GPU:0).
    assert value["assigned"].isdigit(), value
    assert value["visible"] == 1, value
    assert "GPU:0" in value["device"], value
    loss, kernel = _numpy_step()
    assert abs(value["loss"] - loss) <= 1e-4 * max(1.0, loss), (value["loss"], loss)
    np.testing.assert_allclose(np.array(value["kernel"]), kernel, rtol=1e-4, atol=1e-5)
