"""Control messages and gathered records: validated where they enter a process, and a role
process given a wrong message ends with a report that names what was wrong."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tfyarn.cluster.plan import plan_roles
from tfyarn.node.control import ControlPipe
from tfyarn.node.job import JobSpec
from tfyarn.node.messages import Cluster, Endpoint, Hello, Member, MessageError, Setup
from tfyarn.node.ports import reserve_port
from tfyarn.node.role_process import EXIT_FAILED, EXIT_ORPHANED


def _member(task_id: str = "worker:0", **changes: object) -> Member:
    fields: dict[str, object] = {
        "task_id": task_id,
        "host": "127.0.0.1",
        "tf_port": 40000,
        "exchange_address": None,
        "rows": 10,
        "executor": f"127.0.0.1:{hash(task_id) % 1000 + 1}",
        "data_spec": {"x": ["float32", [64]]},
    }
    fields.update(changes)
    return Member(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "message",
    [
        Setup(partition=1, host="h1", peer_hosts=("h0", "h1"), data_path="/tmp/d.arrow"),
        Setup(partition=0, host="h0", peer_hosts=("h0",)),
        Hello(exchange_address="tcp://h0:5000", transport="tcp"),
        Hello(),
        Cluster(members=(_member("chief:0"), _member("worker:0", exchange_address="tcp://h:1"))),
    ],
)
def test_messages_survive_the_wire(message: Setup | Hello | Cluster) -> None:
    raw = json.loads(json.dumps(message.to_json()))
    assert raw["type"] == message.kind
    assert type(message).from_json(raw) == message


def test_records_survive_the_wire() -> None:
    member = _member()
    assert Member.from_json(json.loads(json.dumps(member.to_json()))) == member
    assert member.tf_address == "127.0.0.1:40000"
    assert _member(host="::1").tf_address == "[::1]:40000"
    endpoint = Endpoint(task_id="ps:0", exchange_address="grpc://h:2")
    assert Endpoint.from_json(endpoint.to_json()) == endpoint


def test_a_message_of_another_type_is_named() -> None:
    with pytest.raises(MessageError) as err:
        Setup.from_json({"type": "cluster", "members": []})
    assert str(err.value) == "expected a 'setup' control message, got one of type 'cluster'"
    with pytest.raises(MessageError) as err:
        Hello.from_json(["hello"])
    assert str(err.value) == "a 'hello' control message must be a JSON object, got ['hello']"


def test_every_bad_field_is_named() -> None:
    with pytest.raises(MessageError) as err:
        Setup.from_json({"type": "setup", "partition": "1", "host": 7, "peer_hosts": ["a", 3]})
    assert str(err.value) == (
        "bad 'setup' control message: partition must be int, got '1'; host must be str, "
        "got 7; peer_hosts must be a list of str, got ('a', 3)"
    )
    with pytest.raises(MessageError) as err:
        Setup(partition=-1, host="", peer_hosts=())
    assert str(err.value) == (
        "bad 'setup' control message: host must not be empty; peer_hosts must not be empty; "
        "partition must not be negative, got -1"
    )


def test_missing_and_unknown_fields_are_named() -> None:
    with pytest.raises(MessageError) as err:
        Setup.from_json({"type": "setup", "host": "h", "colour": "red", "shape": 1})
    assert str(err.value) == (
        "bad 'setup' control message: partition is missing; peer_hosts is missing; "
        "unknown field 'colour'; unknown field 'shape'"
    )


def test_json_true_is_not_a_number() -> None:
    with pytest.raises(MessageError, match="partition must be int, got True"):
        Setup(partition=True, host="h", peer_hosts=("h",))
    with pytest.raises(MessageError, match="tf_port must be int, got False"):
        _member(tf_port=False)


def test_member_ranges_and_duplicates() -> None:
    with pytest.raises(MessageError) as err:
        _member(task_id="", tf_port=70000, rows=-1)
    assert str(err.value) == (
        "bad member record: task_id must not be empty; tf_port must be a port number "
        "(1-65535), got 70000; rows must not be negative, got -1"
    )
    with pytest.raises(MessageError) as err:
        Cluster(members=(_member("worker:0"), _member("worker:1"), _member("worker:0")))
    assert str(err.value) == ("bad 'cluster' control message: members name worker:0 more than once")
    with pytest.raises(MessageError, match="members must not be empty"):
        Cluster(members=())


def test_a_bad_member_inside_a_cluster_message_is_located() -> None:
    good = _member("chief:0").to_json()
    bad = {**_member("worker:0").to_json(), "rows": "many"}
    with pytest.raises(MessageError) as err:
        Cluster.from_json({"type": "cluster", "members": [good, bad]})
    assert str(err.value) == "members[1]: bad member record: rows must be int, got 'many'"


def test_messages_are_frozen() -> None:
    hello = Hello(exchange_address=None, transport=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        hello.transport = "tcp"  # type: ignore[misc]


def _pipe_pair() -> tuple[ControlPipe, ControlPipe]:
    a_r, b_w = os.pipe()
    b_r, a_w = os.pipe()
    return ControlPipe(a_r, a_w), ControlPipe(b_r, b_w)


def test_the_control_pipe_refuses_what_it_did_not_expect() -> None:
    task, role = _pipe_pair()
    try:
        setup = Setup(partition=0, host="h", peer_hosts=("h",))
        task.send(setup)
        assert role.receive(Setup, timeout=5) == setup
        task.send(Hello())
        with pytest.raises(MessageError, match="expected a 'cluster' control message, got one "):
            role.receive(Cluster, timeout=5)
        os.write(role._write_fd, b"{not json\n")
        with pytest.raises(MessageError) as err:
            task.receive(Hello, timeout=5)
        assert str(err.value) == (
            "expected a 'hello' control message, got a line that is not JSON: b'{not json'"
        )
        with pytest.raises(TimeoutError):
            task.receive(Hello, timeout=0.1)
    finally:
        role.close()
    assert task.receive(Hello, timeout=5) is None  # end of stream: the other side is gone
    task.close()


def _start_role(tmp_path: Path) -> tuple[subprocess.Popen[bytes], ControlPipe]:
    """A real role process with a job of two roles, driven through its control pipes."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    job = JobSpec(
        job_id="test-protocol",
        plan=plan_roles(workers=1, ps=0),
        trainers=(),
        train_fn=pickle.dumps(None),
        secret=b"s" * 32,
        driver_address=("127.0.0.1", 1),
        startup_timeout=60,
    )
    job.save(tmp_path / "job.pkl")
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    port = reserve_port("127.0.0.1")
    fds = (str(to_child_r), str(from_child_w), str(port.fileno()), str(os.getpid()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tfyarn.node.role_process", str(tmp_path), *fds],
        pass_fds=(to_child_r, from_child_w, port.fileno()),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    os.close(to_child_r)
    os.close(from_child_w)
    port.release()
    return proc, ControlPipe(from_child_r, to_child_w)


def test_a_role_given_the_wrong_message_ends_with_a_report(tmp_path: Path) -> None:
    proc, control = _start_role(tmp_path)
    try:
        control.send(Cluster(members=(_member("chief:0"),)))
        assert control.receive(Hello, timeout=60) is None  # it ended instead of answering
        out, _ = proc.communicate(timeout=60)
    finally:
        control.close()
    assert proc.returncode == EXIT_FAILED
    report = (tmp_path / "error.txt").read_text()
    assert report.startswith(
        "tfyarn role process: MessageError: expected a 'setup' control message, got one of "
        "type 'cluster'\n"
    )
    assert "expected a 'setup' control message" in out.decode()


def test_a_role_set_up_outside_the_plan_ends_with_a_report(tmp_path: Path) -> None:
    proc, control = _start_role(tmp_path)
    try:
        control.send(Setup(partition=5, host="127.0.0.1", peer_hosts=("127.0.0.1",)))
        assert control.receive(Hello, timeout=60) is None
        proc.communicate(timeout=60)
    finally:
        control.close()
    assert proc.returncode == EXIT_FAILED
    assert (
        (tmp_path / "error.txt")
        .read_text()
        .startswith(
            "tfyarn role process: MessageError: bad 'setup' control message: partition 5 is not "
            "in the job's plan of 2 roles\n"
        )
    )


def test_a_role_whose_task_is_gone_removes_its_workspace(tmp_path: Path) -> None:
    workdir = tmp_path / "tfyarn-job" / "worker-0"
    proc, control = _start_role(workdir)
    control.send(Setup(partition=1, host="127.0.0.1", peer_hosts=("127.0.0.1",)))
    control.close()  # the task is gone: the role's hello finds no reader
    proc.communicate(timeout=60)
    assert proc.returncode == EXIT_ORPHANED
    assert not (tmp_path / "tfyarn-job").exists()


def test_a_stopped_role_sent_sigterm_cleans_up_once_resumed(tmp_path: Path) -> None:
    """As when the driver ends a silent (stopped) role's attempt and its task stops it."""
    workdir = tmp_path / "tfyarn-job" / "worker-0"
    proc, control = _start_role(workdir)
    try:
        control.send(Setup(partition=1, host="127.0.0.1", peer_hosts=("127.0.0.1",)))
        assert control.receive(Hello, timeout=60) is not None  # its handlers are in place
        proc.send_signal(signal.SIGSTOP)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        proc.communicate(timeout=60)
    finally:
        control.close()
    assert proc.returncode == -signal.SIGTERM  # what its task reports: killed by SIGTERM
    assert not (tmp_path / "tfyarn-job").exists()


def test_a_cluster_message_must_name_the_jobs_roles(tmp_path: Path) -> None:
    proc, control = _start_role(tmp_path)
    try:
        control.send(Setup(partition=1, host="127.0.0.1", peer_hosts=("127.0.0.1",)))
        assert control.receive(Hello, timeout=60) == Hello(exchange_address=None, transport=None)
        control.send(Cluster(members=(_member("chief:0"), _member("worker:7"))))
        proc.communicate(timeout=60)
    finally:
        control.close()
    assert proc.returncode == EXIT_FAILED
    assert (
        (tmp_path / "error.txt")
        .read_text()
        .startswith(
            "tfyarn role process: MessageError: bad 'cluster' control message: its members "
            "chief:0, worker:7 are not the job's roles chief:0, worker:0\n"
        )
    )
