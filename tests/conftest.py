"""Session-wide fixtures (one local Spark cluster of separate executor processes) and
the markers of the test folders.

Every test outside ``tests/unit`` starts processes beyond the test's own (a Spark or YARN
cluster, TensorFlow roles, transport peers, ``ansible-playbook``) and is marked by its
folder, so that ``-m "not integration and not yarn"`` selects exactly ``tests/unit``
(what ``make check`` runs first).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Executors of the shared test cluster: enough for chief + 2 workers + 1 ps.
EXECUTORS = 4

TESTS = Path(__file__).resolve().parent

#: The marker of each test folder whose tests start processes; ``unit`` has none.
FOLDER_MARKERS: dict[str, str] = {
    "integration": "integration",
    "deploy": "integration",
    "yarn": "yarn",
}


def folder_marker(path: Path) -> str | None:
    """The marker a test file gets from its folder under ``tests/`` (None for unit tests).

    Raises
    ------
    pytest.UsageError
        A test folder that is neither ``unit`` nor in :data:`FOLDER_MARKERS`: say which
        kind its tests are before they can run unmarked in ``make check``.
    """
    folder = path.resolve().relative_to(TESTS).parts[0]
    if folder == "unit":
        return None
    if folder not in FOLDER_MARKERS:
        raise pytest.UsageError(
            f"tests/{folder}/ has no marker: add it to FOLDER_MARKERS in tests/conftest.py "
            "(integration or yarn), or move pure tests to tests/unit"
        )
    return FOLDER_MARKERS[folder]


# First: ``-m`` deselects in another implementation of this hook, which must see the marks.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every collected test by its folder (see :data:`FOLDER_MARKERS`)."""
    for item in items:
        path = Path(str(item.path))
        if not path.resolve().is_relative_to(TESTS):
            continue
        marker = folder_marker(path)
        if marker is not None and item.get_closest_marker(marker) is None:
            item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """A SparkSession on ``local-cluster[4,1,1024]``: 4 executor JVMs, 1 core each.

    Started once per test session; integration tests share it.
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master(f"local-cluster[{EXECUTORS},1,1024]")
        .appName("tfyarn-tests")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", str(EXECUTORS))
        .config("spark.task.maxFailures", "1")
        .config("spark.executorEnv.TF_CPP_MIN_LOG_LEVEL", "2")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
