"""LaunchOptions: tfyarn.run's arguments settled from spark.tfyarn.* and checked once,
every bad field named in one error, a named service looked up only when all is well."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tfyarn.cluster.options import LaunchOptions, launch_options
from tfyarn.cluster.plan import TF_NATIVE_STRATEGIES
from tfyarn.errors import ConfigError
from tfyarn.exchange import STRATEGY_NAMES
from tfyarn.exchange.algorithms import SERVICE_STRATEGIES
from tfyarn.node.job import InputMode
from tfyarn.service.attach import ServiceAttachment
from tfyarn.transport.options import TransportOptions
from tfyarn.transport.select import CHOICES as TRANSPORTS

STRATEGIES = ", ".join((*TF_NATIVE_STRATEGIES, *STRATEGY_NAMES))
SERVICE = ServiceAttachment(
    name="shared", rm_url="http://rm:8088", user="u", transport="tcp", port=7000,
    hosts={"ps-0": "10.0.0.1"},
)  # fmt: skip


def _build(conf: dict[str, str] | None = None, **args: Any) -> LaunchOptions:
    """``launch_options`` as ``tfyarn.run`` calls it, with run()'s defaults."""
    given: dict[str, Any] = {
        "workers": None, "ps": None, "chief": True, "evaluator": False, "data": None,
        "input_mode": None, "strategy": None, "strategy_options": None, "transport": None,
        "transport_options": None, "interface": None, "model_dir": None, "timeout": None,
        "allocation_timeout": 120.0, "startup_timeout": 300.0, "heartbeat_interval": 2.0,
        "silent_warning_after": 60.0, "env": None, "progress": True, "service": None,
    }  # fmt: skip
    given.update(args)
    return launch_options((conf or {}).get, **given)


def test_spark_settings_fill_what_the_call_left_out() -> None:
    conf = {"workers": "3", "ps": "1", "transport": "tcp", "interface": "eth1"}
    options = _build(conf, strategy="downpour")
    assert (options.workers, options.ps, options.transport, options.interface) == (
        3,
        1,
        "tcp",
        "eth1",
    )
    options = _build(conf, workers=2, ps=0, transport="grpc", interface="lo", strategy="easgd")
    assert (options.workers, options.ps, options.transport, options.interface) == (
        2,
        0,
        "grpc",
        "lo",
    )
    assert (options.env, options.strategy_options, options.service) == ({}, {}, None)


def test_exchange_strategies_get_the_auto_transport_others_none() -> None:
    assert _build(workers=2, strategy="allreduce").transport == "auto"
    assert _build(workers=2, strategy="mwms").transport is None
    assert _build(workers=2).transport is None


def test_a_bad_spark_setting_is_named() -> None:
    with pytest.raises(ConfigError) as err:
        _build({"workers": "two"})
    assert str(err.value) == "spark.tfyarn.workers='two' is not valid"


def test_one_problem_reads_as_it_always_did() -> None:
    with pytest.raises(ConfigError) as err:
        _build()
    assert str(err.value) == "say how many workers: tfyarn.run(..., workers=N) or --workers N"
    with pytest.raises(ConfigError) as err:
        _build(workers=1, strategy="bogus")
    assert str(err.value) == f"unknown strategy 'bogus'; choose one of {STRATEGIES}"
    with pytest.raises(ConfigError) as err:
        _build(workers=1, strategy="ps")
    assert str(err.value) == (
        "strategy='ps' needs at least one parameter server: pass ps=1 or more"
    )
    with pytest.raises(ConfigError) as err:
        _build(workers=1, ps=1, strategy="mwms")
    assert str(err.value) == "strategy='mwms' has no parameter servers: pass ps=0"


def test_every_bad_field_is_named() -> None:
    with pytest.raises(ConfigError) as err:
        LaunchOptions(
            workers=-1,
            ps=True,  # type: ignore[arg-type]
            strategy="bogus",
            transport="pigeon",
            allocation_timeout=0,
            startup_timeout=float("nan"),
            heartbeat_interval="2",  # type: ignore[arg-type]
            silent_warning_after=-1,
            timeout=0,
            strategy_options=[1],  # type: ignore[arg-type]
            env={"A": 1},  # type: ignore[dict-item]
        )
    assert str(err.value) == "\n".join(
        [
            "11 problems with tfyarn.run's arguments:",
            "- workers must be at least 0, got -1",
            "- ps must be a whole number, got True",
            f"- unknown strategy 'bogus'; choose one of {STRATEGIES}",
            f"- unknown transport 'pigeon'; choose one of {', '.join(TRANSPORTS)}",
            "- allocation_timeout must be positive seconds, got 0",
            "- startup_timeout must be positive seconds, got nan",
            "- heartbeat_interval must be positive seconds, got '2'",
            "- silent_warning_after must be positive seconds, got -1",
            "- timeout must be positive seconds or None, got 0",
            "- strategy_options must be a dict, got [1]",
            "- env must map names to strings, got {'A': 1}",
        ]
    )


def test_strategy_options_are_checked_by_the_driver() -> None:
    """A misspelt option or compression fails before any Spark job, not in the roles."""
    with pytest.raises(ConfigError) as err:
        _build(workers=2, strategy="allreduce", strategy_options={"compresion": "fp16"})
    assert str(err.value) == (
        "unknown option(s) ['compresion'] for strategy 'allreduce'; allowed: "
        "['bucket_bytes', 'chunk_bytes', 'compression', 'cycle_time_ms', 'density', "
        "'hierarchical', 'timeout']"
    )
    with pytest.raises(ConfigError) as err:
        _build(workers=2, strategy="allreduce", strategy_options={"compression": "int8"})
    assert str(err.value) == (
        "strategy 'allreduce': unknown compression 'int8'; use one of none, fp16, bf16, topk"
    )
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['compression'\]"):
        _build(workers=2, ps=1, strategy="sync_ps", strategy_options={"compression": "fp16"})
    built = _build(workers=2, strategy="allreduce", strategy_options={"compression": "bf16"})
    assert built.strategy_options == {"compression": "bf16"}


def test_without_a_chief_a_worker_is_needed() -> None:
    with pytest.raises(ConfigError) as err:
        _build(workers=0, chief=False)
    assert str(err.value) == "workers must be at least 1, got 0"


def test_input_modes() -> None:
    files = _build(workers=1, data=["a.parquet", "b.parquet"])
    assert (files.input_mode, files.files) == (InputMode.FILES, ("a.parquet", "b.parquet"))
    none = _build(workers=1, data=["a.parquet"], input_mode="none")
    assert (none.input_mode, none.data, none.files) == (InputMode.NONE, None, ())
    with pytest.raises(ConfigError) as err:
        _build(workers=1, data=object(), input_mode="spark")
    assert str(err.value) == "input_mode=SPARK needs data= as a Spark DataFrame, got object"
    with pytest.raises(ConfigError) as err:
        _build(workers=1, data=[1, 2], input_mode=InputMode.FILES)
    assert str(err.value) == "input_mode=FILES needs data= as a list of file paths"
    with pytest.raises(ConfigError) as err:
        _build(workers=1, input_mode="hdfs")
    assert str(err.value) == "unknown input_mode 'hdfs'; choose one of none, spark, files"


def test_an_attached_service_is_an_explicit_field_not_an_option() -> None:
    options = _build(workers=2, chief=False, strategy="downpour", service=SERVICE)
    assert options.service is SERVICE
    assert "service" not in options.strategy_options


def test_a_service_needs_no_ps_and_an_async_strategy() -> None:
    with pytest.raises(ConfigError) as err:
        _build(workers=2, ps=1, strategy="allreduce", service=SERVICE)
    assert str(err.value) == "\n".join(
        [
            "2 problems with tfyarn.run's arguments:",
            f"- service={SERVICE!r} brings its own parameter servers: pass ps=0",
            "- strategy 'allreduce' cannot attach to a service; use one of "
            + ", ".join(SERVICE_STRATEGIES),
        ]
    )


def test_a_named_service_is_looked_up_only_when_all_is_well(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str] = []

    def attach(name: str) -> ServiceAttachment:
        asked.append(name)
        return dataclasses.replace(SERVICE, name=name)

    monkeypatch.setattr("tfyarn.service.attach.attach", attach)
    with pytest.raises(ConfigError) as err:
        _build(workers=2, ps=1, strategy="downpour", service="shared")
    assert str(err.value) == "service='shared' brings its own parameter servers: pass ps=0"
    with pytest.raises(ConfigError, match="2 problems"):
        _build(workers=2, strategy="sync_ps", timeout=-5, service="shared")
    assert asked == []  # refused before the ResourceManager was asked
    options = _build({"service": "from-conf"}, workers=2, strategy="adag")
    assert asked == ["from-conf"]
    assert options.service is not None and options.service.name == "from-conf"


def test_options_are_frozen() -> None:
    options = _build(workers=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.workers = 5  # type: ignore[misc]


def test_tls_is_settled_from_spark_and_needs_a_transport_that_carries_it() -> None:
    assert _build(workers=2, strategy="allreduce").tls is False
    assert _build({"tls": "true"}, workers=2, strategy="allreduce").tls is True
    assert _build({"tls": "TRUE"}, workers=2, strategy="allreduce", tls=False).tls is False
    with pytest.raises(ConfigError, match=r"spark.tfyarn.tls='yes' is not valid"):
        _build({"tls": "yes"}, workers=2, strategy="allreduce")
    with pytest.raises(ConfigError, match="UCX has no TLS"):
        _build(workers=2, strategy="allreduce", transport="ucx", tls=True)
    with pytest.raises(ConfigError, match="TensorFlow's own gRPC"):
        _build(workers=2, strategy="mwms", tls=True)
    site = TransportOptions(tls_root_certs=b"-----BEGIN CERTIFICATE-----")
    with pytest.raises(ConfigError, match="give one or the other"):
        _build(workers=2, strategy="allreduce", transport_options=site, tls=True)
