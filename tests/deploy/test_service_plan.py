"""The service role's decision: what to ask the YARN Services API, given what it answered.

The role renders templates/plan.json.j2 from the GET answer (``service_current``) and the
wanted spec. This runs that template through Ansible itself (one ansible-playbook run on
localhost, every scenario a task) for each kind of answer YARN gives.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ansible_support import ansible_env

REPO = Path(__file__).resolve().parents[2]
PLAN = REPO / "deploy/ansible/roles/service/templates/plan.json.j2"
BIN = Path(sys.executable).parent

SPEC = {
    "name": "tfyarn",
    "version": "2",
    "components": [
        {"name": "ps", "number_of_containers": 2},
        {"name": "tensorboard", "number_of_containers": 1},
    ],
}


def _live(state: str, version: str, ps: int = 2, tb: int = 1) -> dict[str, object]:
    """A GET answer of an existing service (the fields the plan reads)."""
    return {
        "status": 200,
        "json": {
            "name": "tfyarn",
            "version": version,
            "state": state,
            "components": [
                {"name": "ps", "number_of_containers": ps},
                {"name": "tensorboard", "number_of_containers": tb},
            ],
        },
    }


MISSING = {"status": 404, "json": {"diagnostics": "Service tfyarn not found"}}

#: scenario -> (GET answer, service_state, expected action, flex, state)
SCENARIOS: dict[str, tuple[dict[str, object], str, str, list[dict[str, object]], str]] = {
    "missing, wanted up: launch": (MISSING, "started", "create", [], ""),
    "missing, wanted stopped: nothing": (MISSING, "stopped", "none", [], ""),
    "missing, wanted absent: nothing": (MISSING, "absent", "none", [], ""),
    "same version and counts: nothing": (_live("STABLE", "2"), "started", "none", [], ""),
    "other counts: flex": (
        _live("STABLE", "2", ps=1),
        "started",
        "update",
        [{"name": "ps", "number_of_containers": 2}],
        "",
    ),
    "older version: upgrade": (_live("STABLE", "1"), "started", "upgrade", [], ""),
    "stopped, wanted up: start": (_live("STOPPED", "2"), "started", "none", [], "STARTED"),
    "failed, wanted up: start": (_live("FAILED", "2"), "started", "none", [], "STARTED"),
    "running, wanted stopped: stop": (_live("STARTED", "2"), "stopped", "none", [], "STOPPED"),
    "stopped, wanted stopped: nothing": (_live("STOPPED", "2"), "stopped", "none", [], ""),
    "exists, wanted absent: delete": (_live("STABLE", "2"), "absent", "delete", [], ""),
    "check mode, API not called": ({"skipped": True, "changed": False}, "started", "none", [], ""),
}


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, object]]]:
    """Every scenario's plan, rendered by Ansible in one playbook run."""
    root = tmp_path_factory.mktemp("service-plan")
    try:
        yield _render_plans(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _render_plans(root: Path) -> dict[str, dict[str, object]]:
    tasks = [
        {
            "name": name,
            "ansible.builtin.debug": {
                "msg": "PLAN "
                + json.dumps(name)
                + " {{ lookup('ansible.builtin.template', plan_path, template_vars=scenario)"
                " | from_json | to_json }}"
            },
            "vars": {
                "scenario": {
                    "service_current": answer,
                    "service_state": state,
                    "service_spec": SPEC,
                }
            },
        }
        for name, (answer, state, *_) in SCENARIOS.items()
    ]
    playbook = root / "plan.yml"
    playbook.write_text(
        json.dumps(
            [
                {
                    "name": "service plans",
                    "hosts": "localhost",
                    "gather_facts": False,
                    "vars": {"plan_path": str(PLAN)},
                    "tasks": tasks,
                }
            ]
        )
    )
    env = ansible_env(root, ANSIBLE_STDOUT_CALLBACK="default")
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    found: dict[str, dict[str, object]] = {}
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith('"msg": "PLAN '):
            text = json.loads(line.removeprefix('"msg": ').rstrip(","))
            name_json, _, plan_json = text.removeprefix("PLAN ").partition('" ')
            found[json.loads(name_json + '"')] = json.loads(plan_json)
    return found


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_plan(plans: dict[str, dict[str, object]], name: str) -> None:
    _, _, action, flex, state = SCENARIOS[name]
    plan = plans[name]
    assert (plan["action"], plan["flex"], plan["state"]) == (action, flex, state), plan
    assert plan["summary"]
