"""``tfyarn doctor``: find what is wrong with this machine's set-up and say what to do.

Each check is a small function returning :class:`~tfyarn.diagnosis.Check` objects;
:data:`CHECKS` lists them in report order. A layer that knows about a piece of the
environment (the transport knows RDMA and UCX, the yarn package knows Hadoop) provides
its own check function, importing :class:`~tfyarn.diagnosis.Check` from the leaf module
:mod:`tfyarn.diagnosis`, and is listed here. Nothing imports this module back, so the
imports below form no cycle.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from tfyarn.diagnosis import Check, CheckFn
from tfyarn.exchange.checks import check_exchange
from tfyarn.transport.rdma import check_rdma
from tfyarn.transport.selftest import check_transports
from tfyarn.yarn.checks import check_yarn

# Check is re-exported: callers written against ``tfyarn.doctor.Check`` keep working.
__all__ = ["CHECKS", "Check", "CheckFn", "run_checks"]


def run_checks(checks: Iterable[CheckFn] | None = None) -> list[Check]:
    """Run every check, turning a crashing check into a failed :class:`Check`.

    Parameters
    ----------
    checks : iterable of CheckFn, optional
        The check functions to run, in report order; default :data:`CHECKS`.

    Returns
    -------
    list of Check
        Every result, a crashed check standing as one failed result named after it.
    """
    results: list[Check] = []
    for fn in checks if checks is not None else CHECKS:
        try:
            results.extend(fn())
        except Exception as exc:  # a broken check must not hide the others
            results.append(Check(fn.__name__, False, f"check crashed: {exc!r}", "report a bug"))
    return results


def _verdict(name: str, ok: bool, detail: str, fix: str) -> Check:
    """A :class:`Check` whose ``fix`` is shown only when it failed."""
    return Check(name, ok, detail, "" if ok else fix)


def _version_of(argv: list[str]) -> tuple[bool, str]:
    """Run ``argv`` and return whether it succeeded and the first line it printed."""
    # A cold first TensorFlow import on a busy node can take longer than 30 s.
    timeout = float(os.environ.get("TFYARN_DOCTOR_TIMEOUT", "30"))
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    text = (out.stdout + out.stderr).strip().splitlines()
    return out.returncode == 0, text[0] if text else f"exit status {out.returncode}"


def check_python() -> Iterable[Check]:
    """Python >= 3.11."""
    ok = sys.version_info >= (3, 11)
    detail = f"{sys.version.split()[0]} at {sys.executable}"
    yield _verdict("python", ok, detail, "use Python 3.11 or newer")


def check_java() -> Iterable[Check]:
    """Java 17 or newer, needed by Spark 4."""
    java = (
        os.path.join(os.environ["JAVA_HOME"], "bin", "java")
        if os.environ.get("JAVA_HOME")
        else shutil.which("java")
    )
    if not java:
        yield Check(
            "java",
            False,
            "no java on PATH and JAVA_HOME unset",
            "install a JDK 17+ (apt-get install openjdk-17-jre-headless)",
        )
        return
    ok, line = _version_of([java, "-version"])
    match = re.search(r'version "(\d+)', line)
    major = int(match.group(1)) if match else 0
    yield _verdict("java", ok and major >= 17, line, "Spark 4 needs Java 17 or newer")


def check_spark() -> Iterable[Check]:
    """PySpark 4 importable, spark-submit present."""
    try:
        import pyspark
    except ImportError as exc:
        yield Check("spark", False, str(exc), "pip install 'pyspark>=4,<5'")
        return
    submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    ok = pyspark.__version__.startswith("4.") and submit.exists()
    detail = f"pyspark {pyspark.__version__}, spark-submit at {submit}"
    yield _verdict("spark", ok, detail, "install pyspark 4.x")


def check_tensorflow() -> Iterable[Check]:
    """TensorFlow and Keras importable (in a subprocess: importing TF takes seconds and RAM)."""
    ok, line = _version_of(
        [
            sys.executable,
            "-c",
            "import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='3';"
            "import tensorflow as tf, keras;"
            "print('tensorflow', tf.__version__, 'keras', keras.__version__)",
        ]
    )
    detail = line if ok else f"import failed: {line}"
    yield _verdict("tensorflow", ok, detail, "pip install 'tfyarn[tf]' (tensorflow-cpu 2.21)")


#: Every check, in report order: this machine's tools first, then each layer's own.
CHECKS: tuple[CheckFn, ...] = (
    check_python,
    check_java,
    check_spark,
    check_tensorflow,
    check_rdma,  # RDMA devices, UCX transports
    check_exchange,  # native kernels, Open MPI
    check_yarn,  # Hadoop jars, HADOOP_CONF_DIR, RM, Services API
    check_transports,  # tcp/grpc loopback, what "auto" picks
)
