"""The Ansible role deploy/ansible/roles/service, run for real against the dev YARN.

``ansible-playbook`` applies the role on localhost (connection local) to the session's
dev YARN (Hadoop 3.4.2, YARN Services API on). One small service, a ``sleep`` component
whose artifact is a tiny tarball on the dev YARN's HDFS, goes through its whole life, and every
step is checked twice: which of the role's API tasks reported a change (from the
ansible-playbook output), and what the real ``/app/v1/services`` API then answers:

1. launch (POST) -> STABLE with 1 READY container;
2. the same variables again -> no change at all (idempotent);
3. two containers -> flex (PUT /components/<name>) -> 2 READY;
4. ``service_state: stopped`` -> state PUT -> STOPPED;
5. ``service_state: started`` -> state PUT -> STABLE again with its 2 containers;
6. ``service_state: absent`` -> DELETE -> 404.

The service is deleted at the end whatever happened.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ansible_support import ansible_env, play_recap

from tfyarn.errors import ConfigError
from tfyarn.service.attach import attach

from .conftest import REPO, DevYarnFixture

pytestmark = pytest.mark.yarn

ROLES = REPO / "deploy" / "ansible" / "roles"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
SERVICE = "ansible-svc"
COMPONENT = "sleeper"
#: The role's tasks that call the Services API to change something.
API_TASKS = (
    "Launch the service",
    "Upgrade the service to the new version",
    "Flex the components",
    "Start or stop the service",
    "Remove the service",
)
#: ``GET`` answer (status, JSON body) of the service.
Answer = tuple[int, dict[str, Any]]

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_TASK = re.compile(r"^TASK \[(?:[^\]]*? : )?(.+?)\]", re.MULTILINE)
_STATUS = re.compile(r"^(ok|changed|skipping|failed|fatal): \[localhost\]", re.MULTILINE)


@dataclass
class Play:
    """One ansible-playbook run of the role."""

    rc: int
    out: str
    seconds: float

    def statuses(self) -> dict[str, set[str]]:
        """Each task's result kinds (ok, changed, skipping, ...; several for loops)."""
        found: dict[str, set[str]] = {}
        heads = list(_TASK.finditer(self.out))
        for head, following in zip(heads, [*heads[1:], None], strict=True):
            section = self.out[head.end() : following.start() if following else len(self.out)]
            found[head.group(1)] = set(_STATUS.findall(section.split("PLAY RECAP")[0]))
        return found

    def changed_api_tasks(self) -> list[str]:
        """The role's API tasks that reported a change."""
        statuses = self.statuses()
        missing = [t for t in API_TASKS if t not in statuses]
        assert not missing, f"tasks not in the output: {missing}\n{self.out[-4000:]}"
        return [t for t in API_TASKS if "changed" in statuses[t]]

    def recap(self) -> dict[str, int]:
        """The PLAY RECAP counters of localhost."""
        return play_recap(self.out)


@dataclass
class ServiceRole:
    """The role's playbook and variables for one service on the dev YARN."""

    root: Path
    env: dict[str, str]
    variables: dict[str, Any]
    url: str
    dev_yarn: DevYarnFixture

    def play(self, **overrides: Any) -> Play:
        """Apply the role with the base variables and ``overrides``; it must succeed."""
        extra = self.root / f"vars-{len(list(self.root.glob('vars-*')))}.json"
        extra.write_text(json.dumps({**self.variables, **overrides}))
        started = time.monotonic()
        proc = subprocess.run(
            [
                str(ANSIBLE_PLAYBOOK),
                *("-i", "localhost,", "-c", "local", "-e", f"@{extra}"),
                str(self.root / "service.yml"),
            ],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        run = Play(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started)
        wanted = {**self.variables, **overrides}
        counts = [c["number_of_containers"] for c in wanted["service_components"]]
        state = wanted.get("service_state", "started")
        print(f"ansible-playbook ({state}, containers {counts}) in {run.seconds:.1f} s")
        assert run.rc == 0, run.out[-6000:]
        return run

    def get(self) -> Answer:
        """The Services API's answer about the service."""
        try:
            with _NO_PROXY.open(self.url, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            body = err.read()
            try:
                return err.code, json.loads(body or b"{}")
            except ValueError:
                return err.code, {"body": body.decode(errors="replace")}

    def wait(self, what: str, done: Callable[[Answer], bool], timeout_s: float = 180.0) -> Answer:
        """Poll the API (bounded in time and count) until ``done``; fail with the last answer."""
        started = time.monotonic()
        answer = self.get()
        for _ in range(int(timeout_s)):
            if done(answer) or time.monotonic() - started > timeout_s:
                break
            time.sleep(2.0)
            answer = self.get()
        assert done(answer), (
            f"service not {what} after {time.monotonic() - started:.0f} s; last answer "
            f"{json.dumps(answer)[:3000]}\n{self.dev_yarn.cluster.log_tails(30)}"
        )
        print(f"{what} after {time.monotonic() - started:.1f} s")
        return answer

    def delete(self) -> None:
        """DELETE the service, ignoring every error."""
        request = urllib.request.Request(self.url, method="DELETE")
        try:
            with _NO_PROXY.open(request, timeout=30):
                pass
        except (OSError, ValueError):
            pass


def _ready(answer: Answer) -> int:
    """How many of the component's containers are READY."""
    for component in answer[1].get("components") or []:
        if component.get("name") == COMPONENT:
            return sum(c.get("state") == "READY" for c in component.get("containers") or [])
    return 0


def _stable_with(count: int) -> Callable[[Answer], bool]:
    return lambda a: a[0] == 200 and a[1].get("state") == "STABLE" and _ready(a) == count


def _tiny_tarball(path: Path) -> Path:
    payload = path.parent / "hello.txt"
    payload.write_text("hello from the service artifact\n")
    with tarfile.open(path, "w") as tar:
        tar.add(payload, arcname="hello.txt")
    return path


@pytest.fixture(scope="module")
def service_role(
    dev_yarn: DevYarnFixture, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceRole]:
    """The role's playbook, confined to a temp folder; the service is deleted afterwards."""
    root = tmp_path_factory.mktemp("service-role")
    (root / "service.yml").write_text(
        json.dumps(
            [{"name": "service", "hosts": "localhost", "gather_facts": False, "roles": ["service"]}]
        )
    )
    env = ansible_env(
        root,
        ANSIBLE_ROLES_PATH=str(ROLES),
        ANSIBLE_STDOUT_CALLBACK="default",
        ANSIBLE_DISPLAY_SKIPPED_HOSTS="1",
        ANSIBLE_DISPLAY_OK_HOSTS="1",
        no_proxy="127.0.0.1,localhost",
        NO_PROXY="127.0.0.1,localhost",
    )
    user = getpass.getuser()
    # On the cluster file system, as YARN's Services API wants it (HDFS on the dev YARN).
    local_artifact = _tiny_tarball(root / "artifact.tar")
    artifact = f"{dev_yarn.state.default_fs}/tmp/{SERVICE}-{os.getpid()}/artifact.tar"
    dev_yarn.hdfs("-mkdir", "-p", artifact.rsplit("/", 1)[0])
    dev_yarn.hdfs("-put", "-f", str(local_artifact), artifact)
    variables: dict[str, Any] = {
        "ansible_python_interpreter": sys.executable,
        "service_name": SERVICE,
        "service_rm_url": dev_yarn.state.rm_web_url,
        "service_user": user,
        "service_spec_dir": str(root / "spec"),
        "service_artifact_uri": artifact,
        "service_components": [
            {
                "name": COMPONENT,
                "number_of_containers": 1,
                "cpus": 1,
                "memory": 256,
                "launch_command": "sleep 600",
            }
        ],
    }
    api = f"{dev_yarn.state.rm_web_url.rstrip('/')}/app/v1/services"
    role = ServiceRole(root, env, variables, f"{api}/{SERVICE}?user.name={user}", dev_yarn)
    assert role.get()[0] == 404, f"a service {SERVICE} exists already: {role.get()}"
    try:
        yield role
    finally:
        with contextlib.suppress(OSError, ValueError):  # cleanup only: never mask the test
            if role.get()[0] != 404:
                role.delete()
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and role.get()[0] != 404:
                    time.sleep(2.0)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(1200)
def test_role_launches_is_idempotent_flexes_stops_starts_and_deletes(
    service_role: ServiceRole,
) -> None:
    role = service_role
    two = [{**role.variables["service_components"][0], "number_of_containers": 2}]

    # 1. Launch: POST, and YARN brings the service up.
    run = role.play()
    assert run.changed_api_tasks() == ["Launch the service"], run.out[-4000:]
    assert f"service {SERVICE}: launch version 1" in run.out
    spec = json.loads((role.root / "spec" / f"{SERVICE}.json").read_text())
    assert spec["components"][0]["resource"] == {"cpus": 1, "memory": "256"}
    live = role.wait("STABLE with 1 READY", _stable_with(1))[1]
    assert live["version"] == "1"
    assert live["components"][0]["launch_command"] == "sleep 600"
    # The artifact was localised and unpacked into ./lib of the component's container.
    usercache = Path(role.dev_yarn.state.base_dir, "nm-local/usercache")
    app_dir = usercache / role.variables["service_user"] / "appcache" / live["id"]
    unpacked = list(app_dir.glob("*/lib/hello.txt"))
    assert len(unpacked) == 1, f"{live['id']}: {unpacked}"
    # Not a tfyarn ps service: a job cannot attach to it, and is told why.
    with pytest.raises(ConfigError, match="not a tfyarn parameter-server service"):
        attach(SERVICE, rm_url=role.dev_yarn.state.rm_web_url)

    # 2. The same variables again: only the GET, no change anywhere.
    run = role.play()
    assert run.changed_api_tasks() == [], run.out[-4000:]
    assert run.recap()["changed"] == 0, run.out[-4000:]
    assert "live STABLE version 1; up to date" in run.out
    assert _stable_with(1)(role.get())

    # 3. Two containers: flex.
    run = role.play(service_components=two)
    assert run.changed_api_tasks() == ["Flex the components"], run.out[-4000:]
    assert f"flex {COMPONENT}" in run.out
    role.wait("STABLE with 2 READY", _stable_with(2))

    # 4. Stopped.
    run = role.play(service_components=two, service_state="stopped")
    assert run.changed_api_tasks() == ["Start or stop the service"], run.out[-4000:]
    assert "set state STOPPED" in run.out
    role.wait("STOPPED", lambda a: a[0] == 200 and a[1].get("state") == "STOPPED")
    # Stopped stays stopped: a second run changes nothing.
    run = role.play(service_components=two, service_state="stopped")
    assert run.changed_api_tasks() == [], run.out[-4000:]

    # 5. Started again, with the flexed container count.
    run = role.play(service_components=two, service_state="started")
    assert run.changed_api_tasks() == ["Start or stop the service"], run.out[-4000:]
    assert "set state STARTED" in run.out
    role.wait("STABLE with 2 READY after the restart", _stable_with(2))

    # 6. Absent: DELETE, and the API forgets the service.
    run = role.play(service_components=two, service_state="absent")
    assert run.changed_api_tasks() == ["Remove the service"], run.out[-4000:]
    role.wait("deleted (404)", lambda a: a[0] == 404, timeout_s=120.0)
    # Absent stays absent.
    run = role.play(service_components=two, service_state="absent")
    assert run.changed_api_tasks() == [], run.out[-4000:]
    assert f"service {SERVICE}: absent already" in run.out
