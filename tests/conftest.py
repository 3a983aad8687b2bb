"""Session-wide fixtures (one local Spark cluster of separate executor processes) and
the markers of the test folders.

Every test outside ``tests/unit`` starts processes beyond the test's own (a Spark or YARN
cluster, TensorFlow roles, transport peers, ``ansible-playbook``) and is marked by its
folder, so that ``-m "not integration and not yarn"`` selects exactly ``tests/unit``
(what ``make check`` runs first).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
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
    "multihost": "integration",
    "watching": "integration",
    "yarn": "yarn",
}


#: ``make test`` (scripts/test-suite.sh) runs three pytest sessions at once, one per group:
#: ``--test-group yarn`` (one dev YARN, and a local Spark cluster for the service's jobs),
#: ``--test-group spark`` (one local Spark cluster) and ``--test-group light`` (the unit
#: tests, the Ansible deploy, and the watched job on a 2-executor Spark cluster). Two
#: sessions kept the 2 cores busy only about half the time (JVM start-ups, YARN
#: localisation, polling, role start-up waits): the third, light one fills gaps and
#: shortens the two long ones by its ~4 minutes. Plain ``pytest`` runs every group in one
#: session.
TEST_GROUPS: dict[str, str] = {
    "unit": "light",
    "integration": "spark",
    "deploy": "light",
    "multihost": "yarn",  # its own Spark standalone cluster; the shorter group has room
    "watching": "light",  # one job on its own 2-executor cluster: light ends minutes early
    "yarn": "yarn",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--test-group",
        choices=sorted(set(TEST_GROUPS.values())),
        default=None,
        help="run only the tests of this group (tests/conftest.py TEST_GROUPS)",
    )


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


def _select_group(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the tests outside ``--test-group`` (if given)."""
    group = config.getoption("--test-group")
    if group is None:
        return
    keep, drop = [], []
    for item in items:
        path = Path(str(item.path)).resolve()
        folder = path.relative_to(TESTS).parts[0] if path.is_relative_to(TESTS) else ""
        if folder not in TEST_GROUPS:  # a new folder must not drop out of make test
            raise pytest.UsageError(
                f"{path} is in no test group: add its folder to TEST_GROUPS in tests/conftest.py"
            )
        (keep if TEST_GROUPS[folder] == group else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# First: ``-m`` deselects in another implementation of this hook, which must see the marks.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every collected test by its folder (see :data:`FOLDER_MARKERS`); pick a group."""
    _select_group(config, items)
    for item in items:
        path = Path(str(item.path))
        if not path.resolve().is_relative_to(TESTS):
            continue
        marker = folder_marker(path)
        if marker is not None and item.get_closest_marker(marker) is None:
            item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(scope="session")
def spark(request: pytest.FixtureRequest) -> Iterator[object]:
    """A SparkSession on ``local-cluster[4,1,1024]``: 4 executor JVMs, 1 core each.

    Started once per test session; integration tests share it. The yarn and light groups'
    sessions (only two-worker jobs use them: the service's, the watched job) get 2
    executors: two JVMs fewer to start beside the dev YARN or the unit tests.
    """
    executors = 2 if request.config.getoption("--test-group") in ("yarn", "light") else EXECUTORS
    # Every job appends to the job history: the tests' own, not the user's ~/.cache.
    history = tempfile.mkdtemp(prefix="job-history-of-tests-")
    os.environ.setdefault("TFYARN_HISTORY_DIR", history)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master(f"local-cluster[{executors},1,1024]")
        .appName("tfyarn-tests")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        # Its stage bars fill a failed test's captured output and push the failure out of
        # a CI report's head and tail.
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(executors))
        .config("spark.task.maxFailures", "1")
        .config("spark.executorEnv.TF_CPP_MIN_LOG_LEVEL", "2")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    shutil.rmtree(history, ignore_errors=True)
