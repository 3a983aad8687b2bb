"""Benchmark plumbing: report writers, sizes, reps, target ratios, and one tiny real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tfyarn.cli.bench import _benchmarks_module
from tfyarn.cli.main import main as cli_main

# benchmarks/ is not an installed package: import it the way `tfyarn bench` does.
common = _benchmarks_module("benchmarks.common")
transport_bench = _benchmarks_module("benchmarks.transport_bench")


def test_parse_and_format_sizes() -> None:
    assert common.parse_size("4K") == 4096
    assert common.parse_size("64MiB") == 64 << 20
    assert common.parse_size("1g") == 1 << 30
    assert common.parse_size("1000") == 1000
    for bad in ("", "-1", "4X", "0"):
        with pytest.raises(ValueError, match="bad size"):
            common.parse_size(bad)
    assert common.format_size(64 << 20) == "64 MiB"
    assert common.format_size(1000) == "1000 B"


def test_row_measured_derives_throughput_and_latency() -> None:
    r = common.Row.measured("x", "round-trip", 1000, 10, 0.001)
    assert r.gbps == pytest.approx(2 * 1000 * 10 / 0.001 / 1e9)
    assert r.latency_us == pytest.approx(100.0)


def test_reps_adapt_to_size_within_bounds() -> None:
    assert transport_bench.reps_for(4096, "one-way") == transport_bench.MAX_REPS
    assert transport_bench.reps_for(256 << 20, "one-way") == transport_bench.MIN_REPS
    assert transport_bench.reps_for(16 << 20, "one-way") == 16
    assert transport_bench.warm_for(4096, 2000) == 2000
    assert transport_bench.warm_for(64 << 20, 3) == 2


def test_target_ratios() -> None:
    size = 64 << 20
    rows = [
        common.Row.measured(b, "one-way", size, 1, 1.0 / g)
        for b, g in [
            ("memcpy", 8),
            ("ucx-shm", 5),
            ("raw-socket", 2),
            ("tcp", 1.6),
            ("naive-grpc", 0.25),
            ("grpc", 1.0),
            ("tf-grpc", 0.2),
        ]
    ]
    got = {
        what: (compared, ratio)
        for what, compared, ratio, _ in transport_bench.target_ratios(rows, size)
    }
    assert got["shared-memory path vs memcpy"][1] == pytest.approx(5 / 8)
    assert got["tcp backend vs raw socket"][1] == pytest.approx(0.8)
    assert got["grpc backend vs naive grpcio unary"][1] == pytest.approx(4.0)
    assert got["best transport vs TensorFlow gRPC"] == ("ucx-shm / tf-grpc", pytest.approx(25.0))


def test_write_report(tmp_path: Path) -> None:
    rows = [
        common.Row.measured("a", "one-way", 4096, 3, 0.01),
        common.Row.measured("b", "round-trip", 4096, 3, 0.02),
    ]
    paths = common.write_report(tmp_path, "t", "Title", rows, {"k": 1}, "notes here")
    data = json.loads(paths["json"].read_text())
    assert data["meta"]["k"] == 1 and len(data["rows"]) == 2
    md = paths["markdown"].read_text()
    assert md.startswith("# Title") and "notes here" in md and "| 4 KiB | one-way | a |" in md
    assert paths["png"] is not None and paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_cli_runs_a_tiny_real_benchmark(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "bench",
        "transport",
        "--sizes",
        "4K,64K",
        "--backends",
        "memcpy,raw-socket,tcp",
        "--scale",
        "0.002",
        "--rounds",
        "2",
        "--out",
        str(tmp_path),
    ]
    assert cli_main(argv) == 0
    data = json.loads((tmp_path / "transport.json").read_text())
    assert data["meta"]["rounds"] == 2
    assert len(data["rows"]) == 2 * 5  # memcpy one-way + 2 backends x 2 modes, per size
    assert all(len(r["extra"]["rounds_gbps"]) == 2 for r in data["rows"])
    got = {(r["backend"], r["mode"], r["size"]) for r in data["rows"]}
    for backend in ("raw-socket", "tcp"):
        for mode in ("one-way", "round-trip"):
            assert (backend, mode, 65536) in got
    assert all(r["gbps"] > 0 for r in data["rows"])
    out = capsys.readouterr().out
    assert "tcp backend vs raw socket" in out


def test_cli_rejects_unknown_backend(tmp_path: Path) -> None:
    assert cli_main(["bench", "transport", "--backends", "pigeon", "--out", str(tmp_path)]) == 1


def test_best_rows_keeps_the_fastest_round() -> None:
    slow = common.Row.measured("tcp", "one-way", 4096, 10, 2.0)
    fast = common.Row.measured("tcp", "one-way", 4096, 10, 1.0)
    other = common.Row.measured("tcp", "round-trip", 4096, 10, 1.0)
    best = transport_bench.best_rows([slow, fast, other])
    assert len(best) == 2
    kept = next(r for r in best if r.mode == "one-way")
    assert kept.seconds == 1.0 and len(kept.extra["rounds_gbps"]) == 2
