"""Strategy names and options are validated before anything connects."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tfyarn.errors import ConfigError
from tfyarn.exchange import STRATEGY_NAMES
from tfyarn.exchange.algorithms import make_algorithm, period_crossed
from tfyarn.exchange.mesh import ps_tasks, training_tasks


def test_strategy_names() -> None:
    assert STRATEGY_NAMES == (
        "allreduce", "sync_ps", "downpour", "easgd", "model_averaging", "adag",
    )  # fmt: skip


def test_unknown_strategy_and_option_are_named() -> None:
    host = SimpleNamespace(ps=["ps:0"], size=2, service=None)
    with pytest.raises(ConfigError, match="horovod"):
        make_algorithm("horovod", host, {})
    with pytest.raises(ConfigError, match="tau"):
        make_algorithm("adag", host, {"tau": 3})
    with pytest.raises(ConfigError, match="every"):
        make_algorithm("model_averaging", host, {"every": 0})
    assert make_algorithm("easgd", host, {"tau": 3, "timeout": 5}).options["tau"] == 3


@pytest.mark.parametrize("name", ["sync_ps", "downpour", "easgd", "adag"])
def test_ps_algorithms_need_a_ps(name: str) -> None:
    with pytest.raises(ConfigError, match="ps >= 1"):
        make_algorithm(name, SimpleNamespace(ps=[], size=2, service=None), {})


@pytest.mark.parametrize("name", ["sync_ps", "allreduce", "model_averaging"])
def test_only_asynchronous_ps_strategies_attach_to_a_service(name: str) -> None:
    host = SimpleNamespace(ps=["ps-0"], size=2, service=SimpleNamespace(name="svc"))
    with pytest.raises(ConfigError, match="cannot use the parameter servers of service svc"):
        make_algorithm(name, host, {})
    assert make_algorithm("downpour", host, {}).name == "downpour"


def test_rank_order_is_chief_then_workers_by_index() -> None:
    peers = {t: "tcp://127.0.0.1:1" for t in ["worker:10", "ps:1", "worker:2", "chief:0", "ps:0"]}
    assert training_tasks(peers) == ["chief:0", "worker:2", "worker:10"]
    assert ps_tasks(peers) == ["ps:0", "ps:1"]


def test_period_crossed_counts_steps_reported_in_groups() -> None:
    # one step at a time: every 4th step
    assert [t for t in range(1, 13) if period_crossed(t, 1, 4)] == [4, 8, 12]
    # three steps per report (steps_per_execution=3): reports at 3, 6, 9, 12
    assert [t for t in (3, 6, 9, 12) if period_crossed(t, 3, 4)] == [6, 9, 12]
    assert not period_crossed(5, 1, 4)
