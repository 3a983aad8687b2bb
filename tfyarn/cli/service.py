"""``tfyarn service launch|status|flex|stop|start|destroy``: a long-running ps service.

``launch SPEC.yaml`` turns the spec (see conf/service.yaml) into a Yarnfile and submits it
to the YARN Services API of the ResourceManager (``$HADOOP_CONF_DIR`` or ``--rm-url``);
the service's state dir gets its secret first. ``status NAME`` shows every component's
containers and where jobs will find the ps; ``flex NAME COMPONENT N`` resizes the standby
workers or TensorBoard (the ps count is fixed: it decides where each part of the model
lives);
``stop``/``start`` keep the definition and the state dir (the ps reload their snapshots
on start); ``destroy`` deletes the definition (the state dir stays: remove it by hand to
forget the model). ``--print`` shows the Yarnfile without submitting it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from tfyarn.errors import ConfigError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``service`` subcommand and its actions."""
    parser = subparsers.add_parser(
        "service",
        help="launch and manage a long-running parameter-server service on YARN",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rm-url", help="ResourceManager web URL (default: from HADOOP_CONF_DIR)")
    parser.add_argument("--user", help="YARN user (default: the current user)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    launch = actions.add_parser("launch", help="submit a service from a YAML spec")
    launch.add_argument("spec", help="service spec (YAML), e.g. conf/service.yaml")
    launch.add_argument("--name", help="override the spec's name")
    launch.add_argument("--print", action="store_true", help="print the Yarnfile; submit nothing")
    launch.add_argument("--wait", type=float, default=0.0, help="seconds to wait for STABLE (0)")

    status = actions.add_parser("status", help="state, containers and ps endpoints")
    status.add_argument("name")
    status.add_argument("--json", action="store_true", help="the raw status from YARN")

    flex = actions.add_parser("flex", help="set a component's number of containers")
    flex.add_argument("name")
    flex.add_argument("component", help="standby or tensorboard")
    flex.add_argument("instances", type=int)
    flex.add_argument("--wait", type=float, default=0.0, help="seconds to wait for READY (0)")

    for action, text in (
        ("stop", "stop every container (definition and state dir kept)"),
        ("start", "start a stopped service (the ps reload their snapshots)"),
        ("destroy", "delete the service (its state dir is kept)"),
    ):
        actions.add_parser(action, help=text).add_argument("name")
    parser.set_defaults(func=_main)


def _client(args: argparse.Namespace) -> Any:
    from tfyarn.service.client import ServicesClient, rm_web_url

    return ServicesClient(args.rm_url or rm_web_url(os.environ), user=args.user)


def _launch(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tfyarn.service.spec import load_spec, yarnfile
    from tfyarn.service.state import ensure_certificate, ensure_secret

    spec = load_spec(args.spec, os.environ)
    if args.name:
        spec = replace(spec, name=args.name)
    document = yarnfile(spec)
    if args.print:
        print(json.dumps(document, indent=2))
        return 0
    if spec.environment.startswith("/") and not Path(spec.environment).is_file():
        raise ConfigError(
            f"environment archive {spec.environment} does not exist; pack one with "
            "`tfyarn pack-env` (it prints the path) and put its path in the spec"
        )
    spec = _environment_on_cluster_fs(spec)
    document = yarnfile(spec)
    ensure_secret(spec.state_dir)
    if spec.tls:
        ensure_certificate(spec.state_dir)
    if spec.tensorboard.enabled and "://" not in spec.logdir:
        Path(spec.logdir).mkdir(parents=True, exist_ok=True)
    client = _client(args)
    print(client.launch(document))
    if args.wait > 0:
        client.wait(spec.name, timeout_s=args.wait)
        print(f"service {spec.name} is STABLE")
    _print_status(client.status(spec.name))
    return 0


def _environment_on_cluster_fs(spec: Any) -> Any:
    """The spec with a local environment archive put on HDFS when HDFS is the cluster's FS.

    YARN's Services API localises files from ``fs.defaultFS`` only: with HDFS it
    refuses a ``file://`` archive ("Wrong FS"). The archive is uploaded once, as
    ``tfyarn submit`` does (:func:`~tfyarn.yarn.envpack.publish_env_archive`). An archive
    on HDFS that all may read is localised as PUBLIC (``environment_public``).
    """
    from dataclasses import replace

    from tfyarn import storage
    from tfyarn.yarn.envpack import publish_env_archive
    from tfyarn.yarn.submit_support import cluster_default_fs

    default_fs = cluster_default_fs(os.environ)
    if spec.environment.startswith("/") and default_fs.startswith("hdfs://"):
        url = publish_env_archive(Path(spec.environment), default_fs)
        print(f"environment archive: {url}")
        spec = replace(spec, environment=url)
    # Readable by all: the NodeManagers keep one unpacked copy for every application.
    if spec.environment_uri.startswith("hdfs://") and storage.is_public(spec.environment_uri):
        spec = replace(spec, environment_public=True)
    return spec


def _print_status(status: dict[str, Any]) -> None:
    from tfyarn.service.attach import ps_hosts
    from tfyarn.service.client import effective_state
    from tfyarn.service.spec import PROPERTY_KEYS

    name = status.get("name", "?")
    state, reported = effective_state(status), status.get("state")
    lag = f", YARN still reports {reported}" if state != reported else ""
    print(f"service {name}: {state} (application {status.get('id', '-')}{lag})")
    for comp in status.get("components") or []:
        containers = comp.get("containers") or []
        ready = sum(1 for c in containers if c.get("state") == "READY")
        print(
            f"  {comp['name']}: {ready}/{comp.get('number_of_containers', 0)} READY "
            f"({comp.get('state', '-')})"
        )
        for c in containers:
            print(
                f"    {c.get('component_instance_name')}: {c.get('state')} on "
                f"{c.get('ip') or c.get('bare_host') or '-'} ({c.get('id')})"
            )
    props = (status.get("configuration") or {}).get("properties") or {}
    port = props.get(PROPERTY_KEYS["ps_port"])
    transport = props.get(PROPERTY_KEYS["transport"], "tcp")
    for ps, host in ps_hosts(status).items():
        print(f"  endpoint {ps}: {transport}://{host}:{port}")
    tb_port = props.get(PROPERTY_KEYS["tensorboard_port"])
    for comp in status.get("components") or []:
        if comp["name"] == "tensorboard" and tb_port:
            for c in comp.get("containers") or []:
                if c.get("state") == "READY":
                    print(f"  TensorBoard: http://{c.get('ip')}:{tb_port}/")
    if props.get(PROPERTY_KEYS["state_dir"]):
        print(f"  state dir: {props[PROPERTY_KEYS['state_dir']]}")


def _main(args: argparse.Namespace) -> int:
    if args.action == "launch":
        return _launch(args)
    if args.action == "flex" and args.component == "ps":
        raise ConfigError(
            "the number of ps of a service is fixed: it decides which ps holds which part "
            "of the model (a new ps would start its part afresh). Launch another service "
            "with more ps instead, or flex standby/tensorboard"
        )
    client = _client(args)
    if args.action == "status":
        status = client.status(args.name)
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            _print_status(status)
        return 0
    if args.action == "flex":
        print(client.flex(args.name, args.component, args.instances))
        if args.wait > 0:
            client.wait(
                args.name,
                {args.component: args.instances},
                ("STABLE", "STARTED", "FLEXING"),
                timeout_s=args.wait,
            )
            print(f"{args.component}: {args.instances} READY")
        return 0
    actions = {"stop": client.stop, "start": client.start, "destroy": client.destroy}
    print(actions[args.action](args.name))
    return 0
