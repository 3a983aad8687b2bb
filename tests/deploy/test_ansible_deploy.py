"""The Ansible playbooks of deploy/ansible, run for real against this machine.

``ansible-playbook`` runs site.yml on localhost (connection local) with every path the
roles write pointed into a temporary prefix: twice for real (the second run must report
no change), in check mode on an empty prefix (which must stay empty), and with
``rdma_required`` on. ``ansible-lint`` checks everything at the production profile.

What runs for real and what does not:

- rdma: the package task runs against the packages scripts/setup-system.sh already
  installed (apt ``state: present``, no cache update), so it changes nothing; limits go
  to a file under the prefix; the device check reads the real /sys/class/infiniband.
- tfyarn: a real venv is created and tfyarn is installed into it from a wheel built from
  this checkout. Its dependencies (TensorFlow, PySpark, ...) are not downloaded again: the
  test's own site-packages, less tfyarn and pip, is put on PYTHONPATH through the role's
  ``tfyarn_environment`` and pip runs with ``PIP_NO_INDEX``. ``tfyarn pack-env`` packs the
  venv (and its interpreter) for real.
- yarn: merges into a yarn-site.xml the test wrote first.
- doctor: the installed ``tfyarn doctor --json`` runs for real.
- service: no YARN ResourceManager runs here, so the service play is exercised in check
  mode only (the spec is rendered and shown, the REST calls are not made).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ansible_support import ansible_env, play_recap

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "deploy" / "ansible"
BIN = Path(sys.executable).parent
RDMA_SYSFS = Path("/sys/class/infiniband")

# A site configuration the operator already has: the roles must keep all of it.
EXISTING_YARN_SITE = """<?xml version="1.0"?>
<?xml-stylesheet type="text/xsl" href="configuration.xsl"?>
<!-- Site specific YARN configuration, edited by hand. -->
<configuration>
  <property>
    <name>yarn.resourcemanager.hostname</name>
    <value>127.0.0.1</value>
  </property>
  <property>
    <name>yarn.resourcemanager.webapp.address</name>
    <value>127.0.0.1:9</value>
  </property>
  <!-- keep this comment -->
  <property>
    <name>my.custom.setting</name>
    <value>42</value>
    <final>true</final>
  </property>
  <property>
    <name>yarn.nodemanager.resource-plugins</name>
    <value>yarn.io/fpga</value>
  </property>
</configuration>
"""

# Read-only symlinks into the test's site-packages would shadow the tfyarn and pip that the
# role installs into its venv; everything else (TensorFlow, PySpark, venv-pack) is shared.
_NOT_SHARED = re.compile(
    r"^(tfyarn|__editable__|_?_?editable|pip|setuptools|_distutils_hack|pkg_resources)"
    r"([-_.].*)?$|\.pth$"
)


@dataclass
class Run:
    """One ansible-playbook run."""

    rc: int
    out: str

    def recap(self) -> dict[str, int]:
        """The PLAY RECAP counters of localhost (ok, changed, failed, ...)."""
        return play_recap(self.out)


@dataclass
class Deploy:
    """A temporary prefix with everything needed to run the playbooks into it."""

    root: Path
    env: dict[str, str]
    inventory: Path
    wheel: Path
    site_view: Path

    def vars_for(self, prefix: Path, **overrides: object) -> dict[str, object]:
        """Role variables that keep every file the roles write under ``prefix``."""
        conf = prefix / "etc"
        variables: dict[str, object] = {
            "rdma_update_cache": False,
            "rdma_limits_file": str(conf / "security/limits.d/90-tfyarn-rdma.conf"),
            "rdma_interface": "ib0",
            "yarn_conf_dir": str(conf / "hadoop/conf"),
            "yarn_backup": False,
            "yarn_gpu": True,
            "tfyarn_prefix": str(prefix / "opt/tfyarn"),
            "tfyarn_conf_dir": str(conf / "tfyarn"),
            "tfyarn_python": sys.executable,
            "tfyarn_wheel": str(self.wheel),
            # Offline: tfyarn from the wheel, its dependencies from the shared site.
            "tfyarn_environment": {"PYTHONPATH": str(self.site_view), "PIP_NO_INDEX": "1"},
            "tfyarn_archive_uri": f"file://{prefix}/yarn-archives/tfyarn-env.tar.gz",
            "service_spec_dir": str(conf / "tfyarn/service"),
            "service_rm_url": "http://127.0.0.1:8088",
        }
        variables.update(overrides)
        return variables

    def play(self, prefix: Path, *args: str, **overrides: object) -> Run:
        """Run site.yml into ``prefix`` with extra ansible-playbook ``args``."""
        extra = self.root / f"vars-{len(list(self.root.glob('vars-*')))}.json"
        extra.write_text(json.dumps(self.vars_for(prefix, **overrides)))
        proc = subprocess.run(
            [
                str(BIN / "ansible-playbook"),
                "-i",
                str(self.inventory),
                "-e",
                f"@{extra}",
                *args,
                str(ANSIBLE_DIR / "site.yml"),
            ],
            cwd=ANSIBLE_DIR,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        return Run(proc.returncode, proc.stdout + proc.stderr)


def _build_wheel(dest: Path) -> Path:
    """Build a tfyarn wheel from a copy of this checkout (the working tree stays clean)."""
    src = dest / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".venv",
            ".git",
            "build",
            "dist",
            "*.so",
            "*.egg-info",
            "__pycache__",
            ".pytest_cache",
            ".ruff_cache",
            "results",
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dest / "wheels"),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    (wheel,) = (dest / "wheels").glob("tfyarn-*.whl")
    return wheel


def _site_view(dest: Path, name: str = "site-view", drop: re.Pattern[str] | None = None) -> Path:
    """A directory of symlinks to this interpreter's site-packages, less tfyarn and pip.

    ``drop`` leaves out more entries (to make a node that lacks a dependency).
    """
    view = dest / name
    view.mkdir()
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        if not _NOT_SHARED.match(entry.name) and not (drop and drop.match(entry.name)):
            (view / entry.name).symlink_to(entry)
    return view


@pytest.fixture(scope="module")
def deploy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deploy]:
    """Wheel, inventory and an Ansible environment confined to a temporary directory."""
    root = tmp_path_factory.mktemp("deploy")
    inventory = root / "inventory.json"
    local = {"hosts": {"localhost": {}}}
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "vars": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": sys.executable,
                    },
                    "children": {"resourcemanager": local, "nodemanagers": local, "edge": local},
                }
            }
        )
    )
    # ansible_env: one line per message (the yaml format of ansible.cfg wraps long ones).
    env = ansible_env(
        root,
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_REMOTE_TEMP=str(root / "ansible-tmp"),
        XDG_CACHE_HOME=str(root / "cache"),
    )
    yield Deploy(root, env, inventory, _build_wheel(root), _site_view(root))
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def deployed(deploy: Deploy) -> tuple[Path, Run, Run]:
    """site.yml (without the service play) run twice into a prefix with a yarn-site.xml."""
    prefix = deploy.root / "prefix"
    conf = prefix / "etc/hadoop/conf"
    conf.mkdir(parents=True)
    (conf / "yarn-site.xml").write_text(EXISTING_YARN_SITE)
    first = deploy.play(prefix, "--skip-tags", "service")
    second = deploy.play(prefix, "--skip-tags", "service")
    return prefix, first, second


def _rdma_devices() -> list[str]:
    return sorted(p.name for p in RDMA_SYSFS.iterdir()) if RDMA_SYSFS.is_dir() else []


def _properties(path: Path) -> list[tuple[str, str]]:
    return [
        (p.findtext("name", ""), p.findtext("value", ""))
        for p in ET.parse(path).getroot().iter("property")
    ]


def test_first_run_succeeds_and_changes_things(deployed: tuple[Path, Run, Run]) -> None:
    _, first, _ = deployed
    assert first.rc == 0, first.out[-6000:]
    recap = first.recap()
    assert recap["failed"] == 0 and recap["unreachable"] == 0
    assert recap["changed"] >= 5, first.out[-3000:]


def test_second_run_changes_nothing(deployed: tuple[Path, Run, Run]) -> None:
    _, _, second = deployed
    assert second.rc == 0, second.out[-6000:]
    recap = second.recap()
    assert recap["changed"] == 0, f"not idempotent: {recap}\n{second.out[-6000:]}"
    assert recap["ok"] > 20


def test_check_mode_after_deploy_predicts_no_change(
    deployed: tuple[Path, Run, Run], deploy: Deploy
) -> None:
    # On a deployed host, --check must agree with the real second run: nothing to change.
    prefix, _, _ = deployed
    run = deploy.play(prefix, "--check", "--skip-tags", "service,doctor")
    assert run.rc == 0, run.out[-6000:]
    assert run.recap()["changed"] == 0, run.out[-6000:]


def test_yarn_site_is_merged_not_clobbered(deployed: tuple[Path, Run, Run]) -> None:
    prefix, _, _ = deployed
    site = prefix / "etc/hadoop/conf/yarn-site.xml"
    props = _properties(site)
    names = [n for n, _ in props]
    values = dict(props)
    # The operator's settings and comments survive.
    assert values["yarn.resourcemanager.hostname"] == "127.0.0.1"
    assert values["my.custom.setting"] == "42"
    text = site.read_text()
    assert "<!-- keep this comment -->" in text and "configuration.xsl" in text
    # tfyarn's settings appear, each once.
    for name, value in [
        ("yarn.webapp.api-service.enable", "true"),
        ("yarn.log-aggregation-enable", "true"),
        ("yarn.log-aggregation.retain-seconds", "604800"),
        ("yarn.nodemanager.resource-plugins.gpu.allowed-gpu-devices", "auto"),
    ]:
        assert names.count(name) == 1, name
        assert values[name] == value
    # A list property is merged: the existing plugin stays, the GPU plugin is added once.
    assert names.count("yarn.nodemanager.resource-plugins") == 1
    assert values["yarn.nodemanager.resource-plugins"] == "yarn.io/fpga,yarn.io/gpu"
    assert dict(_properties(prefix / "etc/hadoop/conf/resource-types.xml")) == {
        "yarn.resource-types": "yarn.io/gpu"
    }
    calc = dict(_properties(prefix / "etc/hadoop/conf/capacity-scheduler.xml"))
    assert calc["yarn.scheduler.capacity.resource-calculator"].endswith(
        "DominantResourceCalculator"
    )


def test_memlock_limits_written_under_prefix(deployed: tuple[Path, Run, Run]) -> None:
    prefix, _, _ = deployed
    lines = (prefix / "etc/security/limits.d/90-tfyarn-rdma.conf").read_text().splitlines()
    entries = [line.split() for line in lines if line and not line.startswith("#")]
    assert entries == [
        ["*", "soft", "memlock", "unlimited"],
        ["*", "hard", "memlock", "unlimited"],
    ]


def test_rdma_check_reports_what_it_found(deployed: tuple[Path, Run, Run]) -> None:
    _, first, _ = deployed
    devices = _rdma_devices()
    if devices:
        assert f"RDMA devices: {', '.join(devices)}" in first.out
    else:
        assert "no RDMA devices under /sys/class/infiniband" in first.out
    # The IPoIB interface named in the variables is checked; this machine has no ib0.
    if not Path("/sys/class/net/ib0").exists():
        assert "interface ib0 not found under /sys/class/net" in first.out
    # ucx_info (ucx-utils) ran and its transports were listed.
    assert re.search(r"UCX transports: [a-z_0-9, ]*\btcp\b", first.out), first.out[-3000:]


def test_tfyarn_installed_from_the_wheel(deployed: tuple[Path, Run, Run], deploy: Deploy) -> None:
    prefix, _, _ = deployed
    venv = prefix / "opt/tfyarn/venv"
    proc = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            "import importlib.metadata as m, tfyarn\nprint(tfyarn.__file__, m.version('tfyarn'))",
        ],
        env={**deploy.env, "PYTHONPATH": str(deploy.site_view)},
        cwd=deploy.root,  # not the checkout, whose tfyarn/ would be imported instead
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    location, version = proc.stdout.split()
    assert Path(location).is_relative_to(venv), location
    assert deploy.wheel.name.startswith(f"tfyarn-{version}-")
    assert (venv / "bin/tfyarn").exists()


def test_archive_published_where_yarn_localises_it(deployed: tuple[Path, Run, Run]) -> None:
    prefix, _, _ = deployed
    local = prefix / "opt/tfyarn/archives/tfyarn-env-0.1.0.tar.gz"
    published = prefix / "yarn-archives/tfyarn-env.tar.gz"
    assert published.read_bytes() == local.read_bytes()
    with tarfile.open(published) as tar:
        members = {m.name: m for m in tar.getmembers()}
    names = set(members)
    assert "bin/python" in names
    init = re.compile(r"lib/python3\.\d+/site-packages/tfyarn/__init__\.py")
    assert any(init.fullmatch(n) for n in names)
    # Self-contained: the interpreter itself and its standard library are inside.
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert members[f"bin/python{version}"].isfile()
    assert f"lib/python{version}/os.py" in names


def test_profiles_load_and_ship_the_archive(deployed: tuple[Path, Run, Run]) -> None:
    from tfyarn.cluster import profiles

    prefix, _, _ = deployed
    conf = prefix / "etc/tfyarn"
    assert sorted(p.name for p in conf.glob("*.conf")) == [
        "rdma.conf",
        "yarn-client.conf",
        "yarn-cluster.conf",
    ]
    env = {"TFYARN_EXECUTORS": "3"}

    def load(name: str) -> dict[str, str]:
        # The way `tfyarn submit --profile NAME` with TFYARN_CONF_DIR finds and reads it.
        found = profiles.find_profile(
            name, profiles.profile_dirs(None, {"TFYARN_CONF_DIR": str(conf)})
        )
        assert found == conf / f"{name}.conf"
        return profiles.load_profile(found, env)

    client, cluster, rdma = load("yarn-client"), load("yarn-cluster"), load("rdma")
    archive = f"file://{prefix}/yarn-archives/tfyarn-env.tar.gz"
    for p in (client, cluster, rdma):
        assert p["spark.master"] == "yarn"
        assert p["spark.tfyarn.yarn.envArchive"] == archive
        assert p["spark.executor.instances"] == "3"
        assert p["spark.dynamicAllocation.enabled"] == "false"
        assert p["spark.executor.cores"] == p["spark.task.cpus"] == "1"
    assert client["spark.submit.deployMode"] == "client"
    assert cluster["spark.submit.deployMode"] == "cluster"
    assert rdma["spark.tfyarn.transport"] == "rdma"
    assert "spark.tfyarn.transport" not in client
    assert "spark.executor.resource.gpu.amount" not in client


def test_doctor_ran_and_passed(deployed: tuple[Path, Run, Run]) -> None:
    _, first, _ = deployed
    verdict = r"tfyarn doctor: (\d+) of (\d+) checks ok, nothing required is missing"
    m = re.search(verdict, first.out)
    assert m, first.out[-4000:]
    assert int(m.group(2)) > 0
    # The doctor read the yarn-site.xml the yarn role merged (HADOOP_CONF_DIR), and the
    # ResourceManager it names (nothing listens on 127.0.0.1:9) is an optional finding.
    assert re.search(r"yarn: ResourceManager http://127\.0\.0\.1:9\b", first.out), first.out[-4000:]


def test_rdma_required_fails_without_devices(deploy: Deploy) -> None:
    prefix = deploy.root / "prefix-rdma-required"
    run = deploy.play(
        prefix,
        "--tags",
        "rdma",
        "--skip-tags",
        "rdma_packages",
        rdma_required=True,
        rdma_interface="",
    )
    if _rdma_devices():
        assert run.rc == 0, run.out[-4000:]
    else:
        assert run.rc != 0
        assert "no RDMA devices under /sys/class/infiniband and rdma_required is true" in run.out
    shutil.rmtree(prefix, ignore_errors=True)


def test_final_property_is_never_overwritten(deploy: Deploy) -> None:
    prefix = deploy.root / "prefix-final"
    conf = prefix / "etc/hadoop/conf"
    conf.mkdir(parents=True)
    original = EXISTING_YARN_SITE.replace(
        "<name>my.custom.setting</name>\n    <value>42</value>",
        "<name>yarn.log-aggregation-enable</name>\n    <value>false</value>",
    )
    (conf / "yarn-site.xml").write_text(original)
    run = deploy.play(prefix, "--tags", "yarn")
    assert run.rc != 0
    assert "yarn.log-aggregation-enable (final, value 'false', wanted 'true')" in run.out
    assert (conf / "yarn-site.xml").read_text() == original
    shutil.rmtree(prefix, ignore_errors=True)


def test_check_mode_writes_nothing_and_plans_the_service(deploy: Deploy) -> None:
    prefix = deploy.root / "prefix-check"
    run = deploy.play(prefix, "--check", "--diff")
    assert run.rc == 0, run.out[-6000:]
    assert not prefix.exists(), sorted(str(p) for p in prefix.rglob("*"))
    assert run.recap()["changed"] > 0
    # The service spec that a real run would write and POST, as shown by --diff.
    assert "check mode: the YARN Services API at http://127.0.0.1:8088/app/v1/services" in run.out
    assert '"name": "tfyarn"' in run.out and '"number_of_containers": 1' in run.out
    assert '"type": "TARBALL"' in run.out
    assert f"file://{prefix}/yarn-archives/tfyarn-env.tar.gz" in run.out


def test_ansible_lint_production_profile(deploy: Deploy) -> None:
    proc = subprocess.run(
        [
            str(BIN / "ansible-lint"),
            "--offline",
            "-c",
            str(ANSIBLE_DIR / ".ansible-lint"),
            "--nocolor",
            str(ANSIBLE_DIR),
        ],
        cwd=REPO,
        env={**deploy.env, "ANSIBLE_LINT_SKIP_SCHEMA_UPDATE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "Profile 'production' was required, and it passed" in out


def test_doctor_fails_the_play_with_its_findings(
    deployed: tuple[Path, Run, Run], deploy: Deploy
) -> None:
    # The same installed tfyarn on a node whose Python environment lacks TensorFlow: the
    # shared site without it. The doctor reports the failed required check and its fix.
    prefix, _, _ = deployed
    no_tf = _site_view(deploy.root, "site-view-no-tf", drop=re.compile(r"^(tensorflow|keras)"))
    run = deploy.play(prefix, "--tags", "doctor", doctor_environment={"PYTHONPATH": str(no_tf)})
    assert run.rc != 0
    m = re.search(r"tfyarn doctor found (\d+) required check\(s\) failing on localhost", run.out)
    assert m and int(m.group(1)) >= 1, run.out[-4000:]
    assert re.search(r"- tensorflow: .*-- fix: ", run.out), run.out[-4000:]


def test_doctor_that_cannot_run_fails_the_play(
    deployed: tuple[Path, Run, Run], deploy: Deploy
) -> None:
    # Without any of its dependencies tfyarn cannot even start: the play fails and shows why.
    prefix, _, _ = deployed
    run = deploy.play(prefix, "--tags", "doctor", doctor_environment={})
    assert run.rc != 0
    assert re.search(r"tfyarn doctor --json` did not run \(rc 1\): Traceback", run.out), run.out[
        -4000:
    ]
    assert "ModuleNotFoundError" in run.out
