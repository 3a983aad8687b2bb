"""``tfyarn doctor``: find what is wrong with this machine's set-up and say what to do.

Each check is a small function returning :class:`Check` objects; :data:`CHECKS` lists
them in report order. A layer that knows about a piece of the environment (the
transport knows RDMA and UCX, the yarn package knows Hadoop) provides its own check
function and is listed here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["CHECKS", "Check", "run_checks"]


@dataclass(frozen=True)
class Check:
    """The outcome of one check.

    Parameters
    ----------
    name : str
        What was checked, e.g. ``"java"``.
    ok : bool
        Whether it is usable.
    detail : str
        What was found (a version, a device list, an error).
    fix : str
        What to do when ``ok`` is false; empty otherwise.
    required : bool
        Whether tfyarn cannot run at all without it (RDMA, for example, is optional).
    """

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


CheckFn = Callable[[], Iterable[Check]]

#: Filled in below, once every check function is defined.
CHECKS: list[CheckFn] = []


def run_checks(checks: Iterable[CheckFn] | None = None) -> list[Check]:
    """Run every check, turning a crashing check into a failed :class:`Check`."""
    results: list[Check] = []
    for fn in checks if checks is not None else CHECKS:
        try:
            results.extend(fn())
        except Exception as exc:  # a broken check must not hide the others
            results.append(Check(fn.__name__, False, f"check crashed: {exc!r}", "report a bug"))
    return results


def _version_of(argv: list[str]) -> tuple[bool, str]:
    import os
    import subprocess

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
    import sys

    ok = sys.version_info >= (3, 11)
    yield Check(
        "python",
        ok,
        f"{sys.version.split()[0]} at {sys.executable}",
        "" if ok else "use Python 3.11 or newer",
    )


def check_java() -> Iterable[Check]:
    """Java 17 or newer, needed by Spark 4."""
    import os
    import shutil

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
    import re

    match = re.search(r'version "(\d+)', line)
    major = int(match.group(1)) if match else 0
    good = ok and major >= 17
    yield Check("java", good, line, "" if good else "Spark 4 needs Java 17 or newer")


def check_spark() -> Iterable[Check]:
    """PySpark 4 importable, spark-submit present."""
    try:
        import pyspark
    except ImportError as exc:
        yield Check("spark", False, str(exc), "pip install 'pyspark>=4,<5'")
        return
    from pathlib import Path

    submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    ok = pyspark.__version__.startswith("4.") and submit.exists()
    yield Check(
        "spark",
        ok,
        f"pyspark {pyspark.__version__}, spark-submit at {submit}",
        "" if ok else "install pyspark 4.x",
    )


def check_tensorflow() -> Iterable[Check]:
    """TensorFlow and Keras importable (in a subprocess: importing TF takes seconds and RAM)."""
    import sys

    ok, line = _version_of(
        [
            sys.executable,
            "-c",
            "import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='3';"
            "import tensorflow as tf, keras;"
            "print('tensorflow', tf.__version__, 'keras', keras.__version__)",
        ]
    )
    yield Check(
        "tensorflow",
        ok,
        line if ok else f"import failed: {line}",
        "" if ok else "pip install 'tfyarn[tf]' (tensorflow-cpu 2.21)",
    )


CHECKS += [check_python, check_java, check_spark, check_tensorflow]

from tfyarn.transport.rdma import check_rdma  # noqa: E402  (RDMA devices, UCX transports)

CHECKS.append(check_rdma)

from tfyarn.exchange.checks import check_exchange  # noqa: E402  (kernels, Open MPI)

CHECKS.append(check_exchange)

from tfyarn.yarn.checks import check_yarn  # noqa: E402  (Hadoop jars, HADOOP_CONF_DIR, RM)

CHECKS.append(check_yarn)

from tfyarn.transport.selftest import check_transports  # noqa: E402  (tcp/grpc loopback, auto)

CHECKS.append(check_transports)
