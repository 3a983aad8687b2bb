"""What docs/operators.md's production section names exists (its "tested as written").

Operators act on the names they read: an Ansible variable no role defines is silently
ignored by Ansible, a ``spark.tfyarn.*`` property nothing reads is silently ignored by
Spark, and an option ``tfyarn submit`` does not have fails only when tried. Each is
checked against the code that would act on it.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tfyarn.cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]
OPERATORS = REPO / "docs" / "operators.md"


def _production() -> str:
    text = OPERATORS.read_text()
    start = text.index("## What a production cluster needs")
    return text[start:]


def _role_variables() -> set[str]:
    names: set[str] = set()
    for defaults in (REPO / "deploy" / "ansible" / "roles").glob("*/defaults/main.yml"):
        names.update(yaml.safe_load(defaults.read_text()) or {})
    return names


def _code_strings() -> str:
    return "\n".join(p.read_text() for p in (REPO / "tfyarn").rglob("*.py"))


def test_every_ansible_variable_named_is_a_role_default() -> None:
    named = set(re.findall(r"`((?:rdma|yarn|tfyarn|service|doctor)_[a-z_]+)", _production()))
    assert named, "the section names no variables: the pattern is stale"
    assert named - _role_variables() == set()


def test_every_tfyarn_property_named_is_read_by_tfyarn() -> None:
    code = _code_strings()
    named = set(re.findall(r"spark\.tfyarn\.([A-Za-z.]+[A-Za-z])", _production()))
    assert named
    # Read either by its full name or, through the options' lookup, by its key alone.
    unread = {k for k in named if f"spark.tfyarn.{k}" not in code and f'"{k}"' not in code}
    assert unread == set()


def test_every_submit_option_named_exists() -> None:
    command = "submit"
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    options = {o for a in sub.choices[command]._actions for o in a.option_strings}
    # What it hands on to spark-submit (see tfyarn submit --help).
    options |= {"--conf", "--driver-memory", "--py-files", "--files", "--jars"}
    text = OPERATORS.read_text()
    named = set()
    for match in re.finditer(rf"tfyarn {command}((?: [^`\n]*)?)", text):
        named.update(re.findall(r"(--[a-z][a-z-]*)", match.group(1)))
    assert "--max-restarts" in named, "the pattern is stale"
    assert named - options == set()
