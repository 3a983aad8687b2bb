"""Role plan and TF_CONFIG: pure functions, checked against what TensorFlow expects."""

from __future__ import annotations

import json

import pytest

from tfyarn.cluster.plan import (
    RoleSpec,
    choose_chief,
    data_roles,
    default_chief,
    describe,
    plan_job,
    plan_roles,
    tf_cluster,
    tf_config,
)
from tfyarn.errors import ConfigError


def test_plan_lays_out_chief_workers_ps_evaluator_by_partition() -> None:
    plan = plan_roles(workers=2, ps=2, chief=True, evaluator=True)
    assert [r.task_id for r in plan] == [
        "chief:0",
        "worker:0",
        "worker:1",
        "ps:0",
        "ps:1",
        "evaluator:0",
    ]
    assert [r.partition for r in plan] == list(range(6))


def test_plan_without_chief_starts_with_worker_zero() -> None:
    plan = plan_roles(workers=3, chief=False)
    assert [r.task_id for r in plan] == ["worker:0", "worker:1", "worker:2"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 0, "chief": False}, "workers must be at least 1"),
        ({"workers": -1}, "workers must be at least 0"),
        ({"workers": 2, "ps": -1}, "ps must be at least 0"),
        ({"workers": 2.5}, "whole number"),
        ({"workers": True}, "whole number"),
    ],
)
def test_plan_rejects_bad_counts(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_roles(**kwargs)


def test_data_goes_to_workers_and_chief_except_under_ps_strategy() -> None:
    plan = plan_roles(workers=2, ps=1, chief=True, evaluator=True)
    assert [r.task_id for r in data_roles(plan, "ps")] == ["worker:0", "worker:1"]
    for strategy in ("mwms", "allreduce", None):
        assert [r.task_id for r in data_roles(plan, strategy)] == [
            "chief:0",
            "worker:0",
            "worker:1",
        ]


def _addresses(plan: tuple[RoleSpec, ...]) -> dict[RoleSpec, str]:
    return {r: f"10.0.0.{r.partition}:{2000 + r.partition}" for r in plan}


def test_tf_config_matches_tensorflow_layout_and_keeps_evaluator_out() -> None:
    plan = plan_roles(workers=2, ps=1, chief=True, evaluator=True)
    addresses = _addresses(plan)
    worker1 = json.loads(tf_config(addresses, plan[2]))
    assert worker1 == {
        "cluster": {
            "chief": ["10.0.0.0:2000"],
            "worker": ["10.0.0.1:2001", "10.0.0.2:2002"],
            "ps": ["10.0.0.3:2003"],
        },
        "task": {"type": "worker", "index": 1},
    }
    evaluator = json.loads(tf_config(addresses, plan[-1]))
    assert "evaluator" not in evaluator["cluster"]
    assert evaluator["cluster"] == worker1["cluster"]
    assert evaluator["task"] == {"type": "evaluator", "index": 0}


def test_tf_config_is_accepted_by_tensorflows_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorflow as tf

    plan = plan_roles(workers=2, ps=1)
    config = tf_config(_addresses(plan), plan[1])
    monkeypatch.setenv("TF_CONFIG", config)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    assert resolver.task_type == "worker"
    assert resolver.task_id == 0
    assert resolver.cluster_spec().as_dict() == tf_cluster(_addresses(plan))


def test_tf_config_requires_an_address_for_the_role() -> None:
    plan = plan_roles(workers=1)
    with pytest.raises(ConfigError, match="has no address"):
        tf_config({plan[0]: "h:1"}, plan[1])


@pytest.mark.parametrize(
    ("strategy", "chief"),
    [(None, True), ("ps", True), ("mwms", False), ("allreduce", False), ("easgd", False)],
)
def test_default_chief_follows_the_strategy(strategy: str | None, chief: bool) -> None:
    assert default_chief(strategy) is chief
    roles = [r.task_id for r in plan_job(workers=2, ps=1, strategy=strategy)]
    assert ("chief:0" in roles) is chief
    assert roles[-3:] == ["worker:0", "worker:1", "ps:0"]


def test_the_code_wins_else_tfyarn_submit_else_the_strategy() -> None:
    assert choose_chief(True, None, "allreduce") is True
    assert choose_chief(False, None, "ps") is False
    assert choose_chief(None, "false", None) is False  # tfyarn submit --no-chief
    assert choose_chief(None, "true", "allreduce") is True  # submit sized for a chief
    assert choose_chief(False, "false", "allreduce") is False
    with pytest.raises(ConfigError, match=r"spark.tfyarn.chief='maybe' is not valid"):
        choose_chief(None, "maybe", None)


def test_code_that_contradicts_tfyarn_submit_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError) as idle:
        choose_chief(False, "true", "allreduce")
    assert str(idle.value) == (
        "run(chief=False) disagrees with tfyarn submit, which started an executor for a "
        "dedicated chief (spark.tfyarn.chief=true) that would sit idle: submit with "
        "--no-chief, or leave chief= out of run() to follow tfyarn submit"
    )
    with pytest.raises(ConfigError, match=r"run\(chief=True\) .* submit with --chief"):
        choose_chief(True, "false", None)


def test_workers_zero_needs_an_explicit_chief_only_job() -> None:
    with pytest.raises(ConfigError) as implicit:
        plan_job(workers=0)
    assert str(implicit.value) == (
        "workers=0 leaves the chief alone in the job; for a chief-only job say so with "
        "chief=True (tfyarn submit --chief), else pass workers=1 or more"
    )
    assert [r.task_id for r in plan_job(workers=0, chief=True)] == ["chief:0"]
    assert [r.task_id for r in plan_job(workers=0, submitted_chief="true")] == ["chief:0"]
    with pytest.raises(ConfigError, match="workers must be at least 1"):
        plan_job(workers=0, strategy="allreduce")  # no chief by default: nobody would train
    with pytest.raises(ConfigError, match="strategy='ps' needs at least one worker"):
        plan_job(workers=0, ps=1, chief=True, strategy="ps")


def test_describe_names_roles_executors_and_trainers() -> None:
    assert describe(plan_roles(workers=2, ps=1), "ps") == (
        "tfyarn: 4 roles, 4 executors needed (one per role): chief:0, worker:0, worker:1, "
        "ps:0; strategy 'ps'; trainers (they get the data): worker:0, worker:1"
    )
    assert describe(plan_job(workers=2, strategy="allreduce"), "allreduce") == (
        "tfyarn: 2 roles, 2 executors needed (one per role): worker:0, worker:1; strategy "
        "'allreduce'; trainers (they get the data): worker:0, worker:1; no dedicated chief: "
        "worker:0 acts as chief"
    )
    assert describe(plan_roles(workers=0, chief=True), None) == (
        "tfyarn: 1 role, 1 executor needed (one per role): chief:0; no strategy; "
        "trainers (they get the data): chief:0"
    )
