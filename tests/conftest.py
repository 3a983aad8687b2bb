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

from tfyarn.yarn.hadoop_conf import DEV_JVM_FLAGS

#: Executors of the shared test cluster: enough for chief + 2 workers + 1 ps.
EXECUTORS = 4

TESTS = Path(__file__).resolve().parent

#: The marker of each test folder whose tests start processes; ``unit`` has none.
FOLDER_MARKERS: dict[str, str] = {
    "integration": "integration",
    "deploy": "integration",
    "multihost": "integration",
    "watching": "integration",
    "sparkml": "integration",
    "compat": "integration",
    "yarn": "yarn",
}


#: ``make test`` (scripts/test-suite.sh) runs three pytest sessions at once, one per group:
#: ``--test-group yarn`` (one dev YARN with HDFS, a local Spark cluster for the service's
#: jobs, and the namespace hosts' own standalone cluster), ``--test-group spark``
#: (tests/integration on one local Spark cluster) and ``--test-group light`` (the unit
#: tests, the Ansible deploy, and on a small Spark cluster the exchange algorithms' jobs,
#: the watched job, Spark ML and the TFoS and Horovod programs). Most of a session's time
#: is waiting (JVM start-ups, YARN localisation, polling, role start-up), so sessions at
#: once keep the 2 cores busy; a
#: fourth made every session slower (the spark group 21 min 48 s, the yarn group 20 min
#: 34 s, against 20:48 and 19:49 with three). A key is a folder under tests/, or a file
#: there (which wins over its folder). Plain ``pytest`` runs every group in one session.
TEST_GROUPS: dict[str, str] = {
    "unit": "light",
    "integration": "spark",
    # ~4 minutes of jobs moved off the longest group, onto the one that ends first.
    "integration/test_exchange_algorithms.py": "light",
    "integration/test_exchange_references.py": "light",
    "deploy": "light",
    "multihost": "yarn",  # its own Spark standalone cluster across namespaces
    "watching": "light",
    "sparkml": "light",
    "compat": "light",
    # 2 ranks: fits the yarn group's 2 executors; ~2 minutes off the longest group
    "compat/test_horovod.py": "yarn",
    "yarn": "yarn",
}

#: JVM flags of the tests' Spark drivers and executors (see the ``spark`` fixture).
SHORT_LIVED_JVM = " ".join(DEV_JVM_FLAGS)

#: Executors of each group's local Spark cluster (the ``spark`` fixture): what its
#: biggest job needs (the ps algorithms: 2 workers and a ps), no more JVMs than that.
GROUP_EXECUTORS: dict[str | None, int] = {"yarn": 2, "light": 3}


def group_of(path: Path) -> str:
    """The group of the test file ``path`` (see :data:`TEST_GROUPS`).

    Raises
    ------
    pytest.UsageError
        A file in no group: a new folder must not drop out of ``make test``.
    """
    relative = path.resolve().relative_to(TESTS)
    for key in (relative.as_posix(), relative.parts[0]):
        if key in TEST_GROUPS:
            return TEST_GROUPS[key]
    raise pytest.UsageError(
        f"{path} is in no test group: add its folder to TEST_GROUPS in tests/conftest.py"
    )


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
        if not path.is_relative_to(TESTS):
            raise pytest.UsageError(f"{path} is outside tests/: it is in no test group")
        (keep if group_of(path) == group else drop).append(item)
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

    Started once per test session; integration tests share it. The other groups' sessions
    get as many executors as their biggest job needs (:data:`GROUP_EXECUTORS`): fewer
    JVMs to start beside the dev YARN or the unit tests.
    """
    executors = GROUP_EXECUTORS.get(request.config.getoption("--test-group"), EXECUTORS)
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
        # C1 only and the serial collector, as the dev YARN's daemons: these JVMs live
        # minutes on a shared 2-core box, where C2's compiling took half their CPU
        # (a 2-executor session with a few jobs: 49 s of JVM CPU, 22 s with these).
        .config("spark.driver.extraJavaOptions", SHORT_LIVED_JVM)
        .config("spark.executor.extraJavaOptions", SHORT_LIVED_JVM)
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    shutil.rmtree(history, ignore_errors=True)
