"""Strategy names and options are validated before anything connects."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tfyarn import transport
from tfyarn.errors import ConfigError
from tfyarn.exchange import STRATEGY_NAMES, ExchangeStrategy, for_context
from tfyarn.exchange.algorithms import make_algorithm, period_crossed
from tfyarn.exchange.local import LocalContext
from tfyarn.exchange.mesh import Mesh, ps_tasks, training_tasks
from tfyarn.exchange.ps_access import (
    ParameterServers,
    job_parameter_servers,
    service_parameter_servers,
)
from tfyarn.exchange.ring import Ring
from tfyarn.service.attach import ServiceAttachment

#: A ring of one rank: the real collectives, with no peer to wait for.
SOLO = Ring(0, 1, None, None)
#: A service with one ps; nothing connects to it until a client is opened.
SERVICE = ServiceAttachment(
    name="svc", rm_url="http://127.0.0.1:1", user="u", transport="tcp", port=1,
    hosts={"ps-0": "127.0.0.1"},
)  # fmt: skip


@pytest.fixture
def job_ps() -> Iterator[ParameterServers]:
    """The job's own ps ``ps:0`` through a real mesh (no ps process: nothing connects)."""
    secret = secrets.token_bytes(32)
    listener = transport.listen("tcp://127.0.0.1:0", secret=secret)
    peers = {"worker:0": listener.address, "ps:0": "tcp://127.0.0.1:1"}
    mesh = Mesh("worker:0", listener, peers, secret, timeout=5)
    try:
        servers = job_parameter_servers(mesh, ps_tasks(peers))
        assert servers is not None
        yield servers
    finally:
        mesh.close()
        listener.close()


def test_strategy_names() -> None:
    assert STRATEGY_NAMES == (
        "allreduce", "sync_ps", "downpour", "easgd", "model_averaging", "adag",
    )  # fmt: skip


def test_unknown_strategy_and_option_are_named(job_ps: ParameterServers) -> None:
    with pytest.raises(ConfigError, match="horovod"):
        make_algorithm("horovod", {}, SOLO, job_ps)
    with pytest.raises(ConfigError, match="tau"):
        make_algorithm("adag", {"tau": 3}, SOLO, job_ps)
    with pytest.raises(ConfigError, match="every"):
        make_algorithm("model_averaging", {"every": 0}, SOLO, job_ps)
    assert make_algorithm("easgd", {"tau": 3, "timeout": 5}, SOLO, job_ps).options["tau"] == 3


@pytest.mark.parametrize("name", ["sync_ps", "downpour", "easgd", "adag"])
def test_ps_algorithms_need_a_ps(name: str) -> None:
    with pytest.raises(ConfigError, match="ps >= 1"):
        make_algorithm(name, {}, SOLO, None)


@pytest.mark.parametrize("name", ["sync_ps", "allreduce", "model_averaging"])
def test_only_asynchronous_ps_strategies_attach_to_a_service(name: str) -> None:
    servers = service_parameter_servers(SERVICE, "worker:0")
    with pytest.raises(ConfigError, match="cannot use the parameter servers of service svc"):
        make_algorithm(name, {}, SOLO, servers)
    assert make_algorithm("downpour", {}, SOLO, servers).name == "downpour"


def _solo_context(strategy: str, **fields: object) -> LocalContext:
    secret = secrets.token_bytes(32)
    listener = transport.listen("tcp://127.0.0.1:0", secret=secret)
    peers = {"worker:0": listener.address}
    return LocalContext("worker", 0, secret, "tcp", listener, peers, strategy, **fields)


@pytest.mark.parametrize("name", ["sync_ps", "allreduce"])
def test_the_context_service_reaches_the_algorithm(name: str) -> None:
    ctx = _solo_context(name, service=SERVICE)
    try:
        with pytest.raises(ConfigError, match="cannot use the parameter servers of service svc"):
            for_context(ctx)
    finally:
        ctx.listener.close()


def test_a_service_strategy_uses_the_service_ps_only() -> None:
    ctx = _solo_context("downpour", service=SERVICE)
    try:
        strategy = for_context(ctx)
        assert (strategy.service, strategy.ps) == (SERVICE, ["ps-0"])
        assert strategy.algorithm.servers is not None
        assert strategy.algorithm.servers.service == "svc"
        strategy.close()
        # without the service the job has no ps at all
        with pytest.raises(ConfigError, match="run with ps >= 1"):
            ExchangeStrategy(ctx)
    finally:
        ctx.listener.close()


def test_the_service_is_no_strategy_option() -> None:
    ctx = _solo_context("downpour", strategy_options={"service": SERVICE})
    try:
        with pytest.raises(ConfigError, match=r"pass ExchangeStrategy\(ctx, service=attachment\)"):
            for_context(ctx)
    finally:
        ctx.listener.close()


def test_parameter_servers_are_validated() -> None:
    def never(specs: object) -> object:
        raise AssertionError("no client is opened by these checks")

    with pytest.raises(ConfigError, match="at least one server"):
        ParameterServers((), never)
    with pytest.raises(ConfigError, match="repeat"):
        ParameterServers(("ps:0", "ps:0"), never)
    empty = ServiceAttachment(name="bare", rm_url="", user="u", transport="tcp", port=1)
    with pytest.raises(ConfigError, match="service bare has no ready parameter server"):
        service_parameter_servers(empty, "worker:0")


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
