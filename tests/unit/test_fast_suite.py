"""What keeps the dev YARN fast: cheap localisation of the env archive, test markers.

The NodeManager forks one ``chmod`` per file of the environment archive it unpacks, so the
archive leaves out development tools and the localizer JVM forks with vfork; every test
that starts processes outside ``tests/unit`` carries a marker, so that
``-m "not integration and not yarn"`` selects exactly the unit tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

from tfyarn.yarn import envpack, hadoop_conf
from tfyarn.yarn.devcluster import DevYarn
from tfyarn.yarn.hadoop_conf import DEV_JVM_FLAGS, DevYarnSettings

REPO = Path(__file__).resolve().parents[2]
SITE = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"


def _venv_files() -> list[str]:
    prefix = Path(sys.prefix)
    out = []
    for root, _dirs, files in os.walk(prefix):
        out += [os.path.relpath(os.path.join(root, f), prefix) for f in files]
    return out


def _top(path: str) -> str:
    """The ``site-packages`` entry (or the venv path) a file belongs to."""
    if path.startswith(SITE + "/"):
        return path[len(SITE) + 1 :].split("/", 1)[0]
    return path


def test_dev_tools_are_left_out_of_the_archive_and_nothing_a_role_imports() -> None:
    patterns = [p for _, p in envpack._excludes(Path(sys.prefix))]
    files = _venv_files()
    excluded = {f for f in files if any(fnmatch(f, p) for p in patterns)}
    # Every file of an installed dev tool goes (package, modules, dist-info).
    for tool in ("mypy", "_pytest", "hypothesis", "black"):
        own = [f for f in files if _top(f) == tool]
        if own:
            assert set(own) <= excluded, tool
    # What roles import stays, whole: TensorFlow, Keras, NumPy, PyArrow, and the runtime
    # libraries the tools share with them.
    for kept in ("tensorflow/__init__.py", "keras/__init__.py", "numpy/__init__.py"):
        assert f"{SITE}/{kept}" not in excluded
    for library in ("pygments", "rich", "setuptools", "numpy", "keras", "pyarrow", "grpc"):
        gone = [f for f in files if _top(f) == library and f in excluded]
        assert not [f for f in gone if "/tests/" not in f], (library, gone[:5])
    # The dev-tool patterns match only the dev tools' own entries.
    dev_patterns = [p for _, p in envpack._dev_tool_excludes(SITE)]
    matched = {_top(f) for f in files if any(fnmatch(f, p) for p in dev_patterns)}
    for name in matched:
        base = name.split("-", 1)[0].split(".", 1)[0]  # package, module or dist-info
        assert any(fnmatch(base, tool) for tool in envpack.DEV_TOOLS), name


def test_the_fingerprint_changes_with_what_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    before = envpack.env_fingerprint()
    monkeypatch.setattr(envpack, "DEV_TOOLS", (*envpack.DEV_TOOLS, "somethingelse"))
    assert envpack.env_fingerprint() != before


def test_localizer_and_daemons_fork_with_vfork(tmp_path: Path) -> None:
    site = hadoop_conf.yarn_site(DevYarnSettings(base_dir=tmp_path))
    opts = site["yarn.nodemanager.container-localizer.java.opts"].split()
    assert opts == ["-Xmx256m", *DEV_JVM_FLAGS]
    assert "-Djdk.lang.Process.launchMechanism=VFORK" in DEV_JVM_FLAGS
    cluster = DevYarn(DevYarnSettings(base_dir=tmp_path, services=True))
    for name in ("resourcemanager", "nodemanager", "zookeeper"):
        cmd = cluster._daemon_cmd("java", tmp_path, "Main", name)
        assert set(DEV_JVM_FLAGS) <= set(cmd), name
        # JVM flags before the main class, where java reads them.
        assert max(cmd.index(f) for f in DEV_JVM_FLAGS) < cmd.index("Main")


def test_the_jvm_accepts_the_flags_and_forks_with_them() -> None:
    java = subprocess.run(["which", "java"], capture_output=True, text=True).stdout.strip()
    if not java:
        pytest.skip("no java on PATH (scripts/setup-system.sh installs it)")
    probe = (
        "public class P { public static void main(String[] a) throws Exception {"
        ' System.out.println(new ProcessBuilder("true").start().waitFor()); } }'
    )
    source = Path(os.environ.get("TMPDIR", "/tmp")) / f"tfyarn-P-{os.getpid()}" / "P.java"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(probe)
    try:
        proc = subprocess.run(
            [java, *DEV_JVM_FLAGS, str(source)], capture_output=True, text=True, timeout=120
        )
    finally:
        source.unlink()
        source.parent.rmdir()
    assert (proc.returncode, proc.stdout.strip()) == (0, "0"), proc.stderr


def test_unit_tests_are_exactly_the_unmarked_ones() -> None:
    """``-m "not integration and not yarn"`` over all of tests/ selects tests/unit, whole."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "--continue-on-collection-errors",
            "-m",
            "not integration and not yarn",
            "tests",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    selected = {line.split("::", 1)[0] for line in proc.stdout.splitlines() if "::" in line}
    # A module another change broke is reported as an error, not as its tests.
    broken = {line.split()[1] for line in proc.stdout.splitlines() if line.startswith("ERROR ")}
    assert selected, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {f for f in selected if not f.startswith("tests/unit/")} == set()
    unit = {str(p.relative_to(REPO)) for p in (REPO / "tests" / "unit").glob("test_*.py")}
    assert unit - selected - broken == set()
