"""The extension also builds, and works, without UCX (TFYARN_NO_UCX=1, as if no libucx-dev);
the ucx transport and the doctor then say what to install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("tfyarn._native", sys.argv[1])
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
assert m.HAVE_UCX is False, m.HAVE_UCX
assert not hasattr(m, "UcxWorker")
p = m.BufferPool(1 << 20)
b = p.alloc(100)
assert b.address % m.PAGE_SIZE == 0
b.release()
p.close()

# tfyarn on top of this build: the ucx transport and the doctor say what to install.
sys.modules["tfyarn._native"] = m
import tfyarn
tfyarn._native = m
from tfyarn import native
assert native.HAVE_UCX is False
from tfyarn.errors import TransportUnavailableError
from tfyarn.transport import rdma, ucx
secret = b"s" * 32
for call, address in ((ucx.listen, "ucx://127.0.0.1:0"), (ucx.connect, "ucx://127.0.0.1:1")):
    try:
        call(address, secret=secret)
    except TransportUnavailableError as exc:
        assert "libucx-dev" in str(exc) and "reinstall" in str(exc), exc
    else:
        raise AssertionError(f"{call.__name__} worked without UCX")
ucx_check = list(rdma.check_rdma())[1]
assert not ucx_check.ok and not ucx_check.required, ucx_check
assert "libucx-dev" in ucx_check.fix, ucx_check
print("ok")
"""


def test_builds_and_runs_without_ucx(tmp_path):
    env = dict(os.environ, TFYARN_NO_UCX="1")
    build = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "-q",
            "build_ext",
            "--build-lib",
            str(tmp_path / "lib"),
            "--build-temp",
            str(tmp_path / "tmp"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (so,) = (tmp_path / "lib" / "tfyarn").glob("_native*.so")
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(so)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"
