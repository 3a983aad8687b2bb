"""``tfyarn submit``: spark-submit with a cluster profile and tfyarn's settings.

The command line the user sees is :data:`DESCRIPTION`; :func:`build_plan` turns the
options into a spark-submit command without side effects.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tfyarn.cluster import profiles
from tfyarn.cluster.plan import RoleSpec, plan_job
from tfyarn.errors import ConfigError
from tfyarn.transport.select import CHOICES as TRANSPORT_CHOICES
from tfyarn.yarn import submit_support as yarn_submit

__all__ = ["DESCRIPTION", "TAKES_SCRIPT", "build_plan", "register", "split_argv"]

#: Lines of spark-submit's output kept for the failure report.
_TAIL_LINES = 80

#: What ``tfyarn submit --help`` says.
DESCRIPTION = """\
Run a training script with spark-submit on a cluster profile, one executor per
TensorFlow role.

Options up to the script are tfyarn's or spark-submit's (those tfyarn does not know pass
through to spark-submit); everything after the script goes to the script:

  tfyarn submit --profile local-cluster --workers 2 --ps 1 \\
      --driver-memory 2g examples/digits_ps.py --epochs 5

The cluster gets one executor per role: a chief (unless --no-chief), the workers, the
parameter servers and the evaluator. tfyarn.run() in the script follows this layout
when it does not set chief= itself; a script that says otherwise is refused at once.
Strategies other than "ps" need no dedicated chief (worker 0 acts as chief): submit
them with --no-chief.

--conf KEY=VALUE overrides the profile's value (each override is printed), except
settings tfyarn needs: dynamic allocation stays off, spark.executor.instances covers the
roles, spark.task.cpus equals spark.executor.cores, and the role counts come from
--workers/--ps/--chief/--no-chief. Those are refused with the reason.
"""


def register(subparsers: Any) -> None:
    """Add the ``submit`` subcommand."""
    parser = subparsers.add_parser(
        "submit",
        help="run a training script with spark-submit and a cluster profile",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # `--conf` must reach spark-submit, not be taken for an abbreviated --conf-dir.
        allow_abbrev=False,
    )
    _add_options(parser)
    _add_watch_options(parser)
    parser.set_defaults(func=_main)


#: Tells :mod:`tfyarn.cli.main` to split ``[options] SCRIPT.py [script args]`` itself and
#: pass unknown options through (see :func:`split_argv`).
TAKES_SCRIPT = True


def _add_watch_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("watching the job")
    group.add_argument(
        "--tensorboard",
        action="store_true",
        help="serve TensorBoard over the job's log folder from the chief's host while the "
        "job runs; its address is printed at the start (spark.tfyarn.tensorboard)",
    )
    group.add_argument(
        "--log-dir",
        help="the job's TensorBoard folder, a local path on the roles' hosts (default with "
        "--tensorboard: <model_dir>/logs; spark.tfyarn.logDir)",
    )
    group.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics on the driver at http://<driver>:PORT/metrics "
        "(spark.tfyarn.metrics.port; default 0: off)",
    )


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        default="local-cluster",
        help="profile name in conf/ (local-cluster, standalone, yarn-client, "
        "yarn-cluster, rdma) or a .conf file (default: local-cluster)",
    )
    parser.add_argument(
        "--conf-dir", help="directory of profiles (default: $TFYARN_CONF_DIR, conf/)"
    )
    parser.add_argument("--workers", type=int, default=2, help="number of workers (default 2)")
    parser.add_argument("--ps", type=int, default=0, help="number of parameter servers")
    chief = parser.add_mutually_exclusive_group()
    chief.add_argument(
        "--chief",
        action="store_true",
        help="run a dedicated chief (the default; say it for a chief-only job, --workers 0)",
    )
    chief.add_argument(
        "--no-chief",
        action="store_true",
        help="run without a dedicated chief: worker 0 acts as chief (for strategies other than ps)",
    )
    parser.add_argument("--evaluator", action="store_true", help="add an evaluator role")
    parser.add_argument(
        "--transport",
        choices=TRANSPORT_CHOICES,
        help="tfyarn transport for the exchange",
    )
    parser.add_argument(
        "--interface",
        help="network interface (ib0), network (10.20.0.0/16) or address the roles bind to",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="encrypt tfyarn's transport traffic with TLS, with a certificate made for the "
        "job (tcp or grpc; frames are authenticated either way)",
    )
    parser.add_argument(
        "--service",
        help="attach to the parameter servers of this long-running service "
        "(`tfyarn service launch`) instead of starting ps roles (with --ps 0)",
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        help="restarts after a role is lost (killed, preempted, executor or node lost, "
        "silent), each from the last checkpoint (default: the profile's "
        "spark.tfyarn.maxRestarts: 3 on YARN profiles, else 0)",
    )
    parser.add_argument(
        "--min-workers",
        type=int,
        help="a restart that YARN gives fewer executors back within the allocation "
        "timeout goes on with as few as this many workers instead of failing "
        "(spark.tfyarn.minWorkers; default: every restart needs every worker)",
    )
    parser.add_argument(
        "--checkpoint-dir",
        help="folder of the trainers' checkpoints, on storage every node reaches "
        "(default: <model_dir>/checkpoints when restarts are on)",
    )
    parser.add_argument(
        "--checkpoint-every",
        help="checkpoint every N steps (100) or this long (60s, 5m; default 60s)",
    )
    parser.add_argument(
        "--output-json",
        help="write the run's result (status, roles, metrics, wall time, transport) to this file",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the spark-submit command instead of running it",
    )


#: Options that ask for the help text (which needs no script).
_HELP_FLAGS = frozenset({"-h", "--help"})


def split_argv(argv: list[str]) -> tuple[list[str], str, list[str]]:
    """Split ``[options..., script, script args...]`` at the first ``.py`` argument.

    Without a script, a ``-h``/``--help`` among the options still goes to the parser
    (which prints the help and exits 0); the script is then ``""``.
    """
    for i, arg in enumerate(argv):
        if arg.endswith(".py") and not arg.startswith("-"):
            return argv[:i], arg, argv[i + 1 :]
    if _HELP_FLAGS.intersection(argv):
        return list(argv), "", []
    raise ConfigError("no training script given: tfyarn submit [options] SCRIPT.py [args]")


def _spark_submit() -> str:
    """spark-submit from $SPARK_HOME, else the one pip's pyspark ships."""
    if os.environ.get("SPARK_HOME"):
        return str(Path(os.environ["SPARK_HOME"]) / "bin" / "spark-submit")
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / "spark-submit")


def build_plan(
    options: argparse.Namespace,
    passthrough: list[str],
    script: str,
    script_args: list[str],
    env: dict[str, str],
) -> profiles.SubmitPlan:
    """The spark-submit command and environment for these options (no side effects)."""
    roles = _roles(options)
    run_env = profiles.default_env(env, len(roles), sys.executable)
    path = profiles.find_profile(options.profile, profiles.profile_dirs(options.conf_dir, run_env))
    props = profiles.load_profile(path, run_env)
    user_conf, passthrough = profiles.take_user_conf(passthrough)
    props, overrides = profiles.merge_user_conf(props, user_conf)
    profiles.check_required(props, len(roles))
    props["spark.tfyarn.workers"] = str(options.workers)
    props["spark.tfyarn.ps"] = str(options.ps)
    # tfyarn.run follows this unless the script says otherwise (then it refuses at once)
    props["spark.tfyarn.chief"] = "true" if any(r.name == "chief" for r in roles) else "false"
    if options.transport:
        props["spark.tfyarn.transport"] = options.transport
    if options.interface:
        props["spark.tfyarn.interface"] = options.interface
    if options.tls:
        props["spark.tfyarn.tls"] = "true"
    if options.tensorboard:
        props["spark.tfyarn.tensorboard"] = "true"
    if options.log_dir:
        props["spark.tfyarn.logDir"] = options.log_dir
    if options.metrics_port is not None:
        props["spark.tfyarn.metrics.port"] = str(options.metrics_port)
    if options.service:
        props["spark.tfyarn.service"] = options.service
    props.update(_restart_props(options))
    if options.output_json:
        props["spark.tfyarn.outputJson"] = str(Path(options.output_json).resolve())
    run_env.update(profiles.local_ip_env(props, run_env))
    argv = profiles.spark_submit_argv(_spark_submit(), props, passthrough, script, script_args)
    return profiles.SubmitPlan(argv=argv, env=run_env, properties=props, overrides=overrides)


def _restart_props(options: argparse.Namespace) -> dict[str, str]:
    """``spark.tfyarn.*`` of ``--max-restarts/--min-workers/--checkpoint-dir/--checkpoint-every``.

    Only those given: the profile's ``spark.tfyarn.maxRestarts`` stays otherwise.
    """
    props = {}
    if options.max_restarts is not None:
        if options.max_restarts < 0:
            raise ConfigError(f"--max-restarts must be 0 or more, got {options.max_restarts}")
        props["spark.tfyarn.maxRestarts"] = str(options.max_restarts)
    if options.min_workers is not None:
        if options.min_workers < 1:
            raise ConfigError(f"--min-workers must be 1 or more, got {options.min_workers}")
        props["spark.tfyarn.minWorkers"] = str(options.min_workers)
    if options.checkpoint_dir:
        props["spark.tfyarn.checkpoint.dir"] = options.checkpoint_dir
    if options.checkpoint_every:
        props["spark.tfyarn.checkpoint.every"] = options.checkpoint_every
    return props


def _roles(options: argparse.Namespace) -> tuple[RoleSpec, ...]:
    """The roles the cluster is sized for: a chief unless ``--no-chief``.

    The strategy is the script's business, unknown here, so the layout is the default of
    no strategy (a chief); ``--chief`` makes a chief-only job (``--workers 0``) explicit.
    """
    chief = True if options.chief else False if options.no_chief else None
    return plan_job(
        workers=options.workers, ps=options.ps, chief=chief, evaluator=options.evaluator
    )


def _run(
    plan: profiles.SubmitPlan, on_line: Callable[[str], None] | None = None
) -> tuple[int, str]:
    """Run spark-submit, echoing its output; return its exit status and output tail."""
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    with subprocess.Popen(
        plan.argv,
        env=plan.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                tail.append(line)
                if on_line is not None:
                    on_line(line)
        except KeyboardInterrupt:
            proc.terminate()  # spark-submit's shutdown hook cancels the job
            proc.wait(timeout=60)
            raise
    return proc.returncode, "".join(tail)


#: Launches of one submit at most: the first, and one more after Spark's UI race.
_LAUNCHES = 2


def launch_again(code: int, hit_ui_start_race: bool, launch: int) -> bool:
    """Whether ``tfyarn submit`` launches once more after launch number ``launch`` (pure).

    Only a failed launch whose driver hit Spark's yarn-client UI start-up race
    (:attr:`~tfyarn.yarn.submit_support.YarnAppWatcher.hit_ui_start_race`), and only
    while fewer than :data:`_LAUNCHES` ran: a race seen twice is reported, not retried.
    """
    return code != 0 and hit_ui_start_race and launch < _LAUNCHES


def _report(path: str, code: int, tail: str, wall: float, plan: profiles.SubmitPlan) -> None:
    """Complete the driver's JSON report (or write one if the driver never got to it)."""
    target = Path(path)
    report: dict[str, Any] = {}
    if target.exists():
        try:
            report = json.loads(target.read_text())
        except ValueError:
            report = {}
    if not report:
        report = {
            "status": "failed" if code else "unknown",
            "error": "the driver exited before tfyarn.run reported a result",
            "output_tail": tail,
        }
    if code and report.get("status") == "succeeded":
        report["status"] = "failed"
    report["submit"] = {"exit_code": code, "wall_time": wall, "argv": plan.argv}
    target.write_text(json.dumps(report, indent=2, default=str))


def _main(args: argparse.Namespace) -> int:
    plan = build_plan(args, args.passthrough, args.script, args.script_args, dict(os.environ))
    plan = yarn_submit.prepare_plan(plan)  # YARN: env archive, GPUs, dev-YARN settings
    for override in plan.overrides:
        print(f"tfyarn: {override}", file=sys.stderr)
    if args.dry_run:
        print(" ".join(plan.argv))
        return 0
    started = time.monotonic()
    for launch in range(1, _LAUNCHES + 1):
        watcher = yarn_submit.YarnAppWatcher(plan) if yarn_submit.is_yarn(plan.properties) else None
        code, tail = _run(plan, watcher.feed if watcher else None)
        if watcher is not None:
            code = watcher.finish(code)  # final YARN state; a cluster-mode driver's traceback
        if not launch_again(code, watcher is not None and watcher.hit_ui_start_race, launch):
            break
        assert watcher is not None
        print(
            "tfyarn: the driver's SparkContext failed to start in Spark's yarn-client UI "
            f"race ({watcher.app_id}; nothing of the job ran); submitting once more",
            file=sys.stderr,
            flush=True,
        )
    if args.output_json:
        _report(args.output_json, code, tail, time.monotonic() - started, plan)
    return code
