"""The parts that watch a job (issue 18), each on real inputs: the exchange's counters
over a real tcp connection, the history file, the Prometheus exposition read back with
prometheus-client's parser, the driver's TensorBoard link over HTTP, and the options.

tests/watching/test_watching.py runs them all together on a real job.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tfyarn import transport
from tfyarn.cluster.attempts import Attempt
from tfyarn.cluster.history import (
    HistoryWriter,
    find_history,
    list_histories,
    plot_history,
    read_history,
    role_sample,
)
from tfyarn.cluster.launcher import job_log_dir
from tfyarn.cluster.metrics import MetricsServer, RunView
from tfyarn.cluster.options import launch_options
from tfyarn.cluster.progress import RoleState
from tfyarn.cluster.tensorboard_link import TensorBoardLink, job_description
from tfyarn.errors import ConfigError
from tfyarn.exchange.stats import CountedComm, ExchangeFigures, ExchangeStats
from tfyarn.yarn.devcluster import free_ports

SECRET = b"s" * 32


# -- the exchange's counters ------------------------------------------------------------


def test_counted_comm_counts_the_payload_bytes_each_way_over_tcp() -> None:
    stats = ExchangeStats()
    payload = np.arange(10_000, dtype=np.float32)
    with transport.listen("tcp://127.0.0.1:0", secret=SECRET) as listener:
        accepted: list[Any] = []
        thread = threading.Thread(target=lambda: accepted.append(listener.accept(timeout=10)))
        thread.start()
        with CountedComm(transport.connect(listener.address, secret=SECRET), stats) as comm:
            thread.join(timeout=10)
            with CountedComm(accepted[0], stats) as peer, stats.timed():
                comm.send(payload)
                got = np.empty_like(payload)
                assert peer.recv_into(got) == payload.nbytes
                peer.send(b"ack")
                assert bytes(comm.recv()) == b"ack"
    np.testing.assert_array_equal(got, payload)
    figures = stats.figures()
    assert figures.bytes_sent == payload.nbytes + 3
    assert figures.bytes_received == payload.nbytes + 3
    assert figures.operations == 1 and figures.seconds > 0
    assert figures.active


def test_figures_round_trip_and_refuse_garbage() -> None:
    figures = ExchangeFigures(10, 20, 1.5, 3, 4)
    assert ExchangeFigures.from_json(json.loads(json.dumps(figures.to_json()))) == figures
    assert ExchangeFigures.from_json("nope") is None
    assert ExchangeFigures.from_json({"bytes_sent": "many"}) is None
    assert not ExchangeFigures().active


# -- the history ------------------------------------------------------------------------


def _running(task: str, step: int, loss: float) -> RoleState:
    state = RoleState(task, host="10.0.0.5")
    state.update({"kind": "ready", "host": "10.0.0.5"})
    state.update({"kind": "metrics", "step": step, "loss": loss, "samples": 64})
    state.update({"kind": "metrics", "step": step + 10, "loss": loss, "samples": 640})
    return state


def _a_restarted_job(folder: Path) -> str:
    writer = HistoryWriter(str(folder), "20261206-120000-abcdef12")
    writer.append("job", job_id="20261206-120000-abcdef12", settings={"workers": 2, "ps": 0})
    writer.append("attempt", number=1, of=2)
    for step in (10, 20):
        states = [_running("worker:0", step, 1.0 / step), _running("worker:1", step, 2.0 / step)]
        writer.append("roles", attempt=1, roles=[role_sample(s, s.last_seen) for s in states])
    lost = Attempt(1, 100.0, 130.0, "role worker:1 killed by signal 9", "lost", "worker:1")
    writer.append("attempt_end", attempt=lost.__dict__)
    writer.append("attempt", number=2, of=2)
    states = [_running("worker:0", 30, 0.01), _running("worker:1", 30, 0.02)]
    writer.append("roles", attempt=2, roles=[role_sample(s, s.last_seen) for s in states])
    writer.append("attempt_end", attempt=Attempt(2, 131.0, 160.0).__dict__)
    writer.append("end", status="succeeded", wall_time=61.0)
    writer.close()
    return writer.path


def test_the_history_reads_back_what_the_driver_appended(tmp_path: Path) -> None:
    path = _a_restarted_job(tmp_path)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    history = read_history(path)
    assert history.job_id == "20261206-120000-abcdef12"
    assert history.status == "succeeded"
    assert [a["kind"] for a in history.attempts] == ["lost", None]
    assert [n for _, n in history.restarts] == [2]
    times, losses = history.series("loss")["worker:0"]
    assert losses == pytest.approx([0.1, 0.05, 0.01]) and times == sorted(times)
    rates = history.series("samples_per_s")["worker:1"][1]
    assert all(r > 0 for r in rates)


def test_a_torn_last_line_is_skipped_and_the_job_shows_unfinished(tmp_path: Path) -> None:
    path = _a_restarted_job(tmp_path)
    lines = Path(path).read_text().splitlines()
    # The driver died while writing the end: half a line, no newline.
    Path(path).write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    history = read_history(path)
    assert history.torn == 1
    assert history.status == "unfinished"
    assert len(history.attempts) == 2


def test_jobs_are_listed_oldest_first_and_found_by_a_prefix(tmp_path: Path) -> None:
    _a_restarted_job(tmp_path)
    later = HistoryWriter(str(tmp_path), "20261206-130000-00000000")
    later.append("job", job_id="20261206-130000-00000000", settings={})
    later.close()
    assert [h.job_id for h in list_histories(str(tmp_path))] == [
        "20261206-120000-abcdef12",
        "20261206-130000-00000000",
    ]
    assert find_history(str(tmp_path), "20261206-12").job_id == "20261206-120000-abcdef12"
    with pytest.raises(ConfigError, match="names several jobs"):
        find_history(str(tmp_path), "20261206")
    with pytest.raises(ConfigError, match="no job 'nope'"):
        find_history(str(tmp_path), "nope")
    assert list_histories(str(tmp_path / "missing")) == []
    with pytest.raises(ConfigError, match="not a local folder"):
        HistoryWriter("hdfs://nn:8020/history", "x")


def test_the_plot_is_a_png_with_the_restart_marked(tmp_path: Path) -> None:
    import matplotlib.image

    history = read_history(_a_restarted_job(tmp_path))
    out = plot_history(history, tmp_path / "job.png")
    image = matplotlib.image.imread(out)
    assert image.shape[0] >= 500 and image.shape[1] >= 800
    # The restart line is drawn in matplotlib's tab:red: some pixels of that colour.
    red = np.array([0xD6, 0x27, 0x28]) / 255
    assert (np.abs(image[..., :3] - red).sum(axis=-1) < 0.05).sum() > 50

    empty = HistoryWriter(str(tmp_path), "no-steps")
    empty.append("job", job_id="no-steps", settings={})
    empty.close()
    with pytest.raises(ConfigError, match="no samples of loss or samples/s"):
        plot_history(read_history(empty.path), tmp_path / "none.png")


# -- Prometheus -------------------------------------------------------------------------


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_metrics_endpoint_serves_the_roles_and_the_job() -> None:
    worker = _running("worker:1", 40, 0.25)
    worker.update({"kind": "beat", "exchange": {"bytes_sent": 4096, "seconds": 0.5}})
    ps = RoleState("ps:0", state="serving", host="10.0.0.6")
    ps.update({"kind": "beat", "exchange": {"ps_requests": 12}})
    view = RunView("job-1", attempt=2, roles=lambda: [worker, ps])
    view.attempt_ended(Attempt(1, 1.0, 2.0, "killed", "lost", "worker:1"))
    server = MetricsServer(view, "127.0.0.1", free_ports(1)[0])
    try:
        got = _scrape(server.url)
    finally:
        server.close()
    w = (("host", "10.0.0.5"), ("job", "job-1"), ("role", "worker:1"))
    p = (("host", "10.0.0.6"), ("job", "job-1"), ("role", "ps:0"))
    assert got[("tfyarn_role_step", w)] == 50
    assert got[("tfyarn_role_loss", w)] == 0.25
    assert got[("tfyarn_role_state", tuple(sorted((*w, ("state", "running")))))] == 1
    assert got[("tfyarn_role_state", tuple(sorted((*w, ("state", "done")))))] == 0
    assert got[("tfyarn_role_exchange_sent_bytes_total", w)] == 4096
    assert got[("tfyarn_role_exchange_seconds_total", w)] == 0.5
    assert got[("tfyarn_role_restarts_total", w)] == 1
    assert got[("tfyarn_role_ps_requests_total", p)] == 12
    assert got[("tfyarn_role_restarts_total", p)] == 0
    assert got[("tfyarn_job_attempt", (("job", "job-1"),))] == 2
    assert got[("tfyarn_job_attempts_total", (("job", "job-1"),))] == 1
    assert ("tfyarn_role_step", p) not in got  # a ps has no step: no sample, not a 0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=5)  # closed with the run


# -- the TensorBoard link ---------------------------------------------------------------


def test_the_link_answers_503_until_tensorboard_serves_then_redirects_keeping_the_path() -> None:
    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(["worker_0/train"]).encode() if self.path == "/data/runs" else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    target: list[str] = []
    fake_board = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=fake_board.serve_forever, daemon=True).start()
    link = TensorBoardLink("127.0.0.1", lambda: target[0] if target else None)
    try:
        with pytest.raises(urllib.error.HTTPError) as starting:
            urllib.request.urlopen(link.url + "data/runs", timeout=5)
        assert starting.value.code == 503 and starting.value.headers["Retry-After"] == "5"
        target.append(f"http://127.0.0.1:{fake_board.server_port}/")
        with urllib.request.urlopen(link.url + "data/runs", timeout=5) as reply:
            assert json.loads(reply.read()) == ["worker_0/train"]
            assert reply.url == target[0] + "data/runs"
    finally:
        link.close()
        fake_board.shutdown()
        fake_board.server_close()
    assert job_description("j1", None) == "tfyarn job j1"
    assert (
        job_description("j1", link.url) == f'tfyarn job j1 (<a href="{link.url}">TensorBoard</a>)'
    )


def test_a_view_that_cannot_start_is_warned_about_and_the_job_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tfyarn.cluster.observe import RunObservers

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        observers = RunObservers(
            "j1",
            "127.0.0.1",
            {},
            history_dir=str(not_a_folder / "history"),
            history_interval=1.0,
            metrics_port=taken.getsockname()[1],
            tensorboard=False,
        )
    try:
        assert observers.history is None and observers.metrics is None
        observers.finished({"status": "succeeded"})  # nothing to write to: no error
    finally:
        observers.close()
    assert "no Prometheus metrics" in caplog.text and "no history of this job" in caplog.text


# -- options ----------------------------------------------------------------------------


def _options(conf: dict[str, str] | None = None, **given: Any) -> Any:
    lookup = (conf or {}).get
    return launch_options(
        lambda key: lookup(key),
        workers=2,
        ps=0,
        transport=None,
        interface=None,
        service=None,
        data=None,
        input_mode=None,
        strategy=None,
        **given,
    )


def test_watch_options_come_from_the_call_or_the_spark_conf() -> None:
    options = _options(
        {
            "tensorboard": "true",
            "metrics.port": "9464",
            "history.dir": "/var/tmp/h",
            "history.interval": "2",
            "logDir": "/data/logs",
        }
    )
    assert options.tensorboard and options.metrics_port == 9464
    assert options.history_dir == "/var/tmp/h" and options.history_interval == 2.0
    assert options.log_dir == "/data/logs"
    assert _options({"history.dir": "none"}).history_dir == ""
    assert _options({"tensorboard": "true"}, tensorboard=False).tensorboard is False
    # The call's own interval wins over the conf's (it was once dropped for the default).
    assert _options({"history.interval": "2"}, history_interval=0.5).history_interval == 0.5
    off = _options()
    assert (off.tensorboard, off.metrics_port, off.log_dir) == (False, 0, None)


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ({"log_dir": "hdfs://nn:8020/logs"}, "writes summaries to local paths only"),
        ({"metrics_port": 70000}, "metrics_port must be a port number"),
        ({"metrics_port": True}, "metrics_port must be a port number"),
        ({"tensorboard": "yes"}, "tensorboard must be True or False"),
    ],
)
def test_bad_watch_options_are_refused(given: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        _options(**given)


def test_the_default_log_dir_follows_the_model_dir() -> None:
    on = _options(tensorboard=True)
    assert job_log_dir(on, "/tmp/m", "j1", "/tmp") == "/tmp/m/logs"
    assert job_log_dir(on, "file:///tmp/m", "j1", "/tmp") == "/tmp/m/logs"
    assert job_log_dir(on, "hdfs://nn/m", "j1", "/scratch") == "/scratch/tfyarn-logs/j1"
    assert job_log_dir(_options(), "/tmp/m", "j1", "/tmp") == ""
    assert job_log_dir(_options(log_dir="/l"), "hdfs://nn/m", "j1", "/tmp") == "/l"
