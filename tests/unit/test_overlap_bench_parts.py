"""``tfyarn bench overlap``: its report (the measurement runs TensorFlow workers:
`tfyarn bench overlap`)."""

from __future__ import annotations

import argparse

from benchmarks.overlap_bench import OverlapRow, add_arguments, report_markdown


def test_the_report_states_the_setup_and_every_row() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert (args.layers, args.width, args.delay, args.bucket_bytes) == (6, 1024, 0.011, 4 << 20)
    rows = [
        OverlapRow("no delay", 4 << 20, None, 0.0, 651.0, 0.0),
        OverlapRow("one bucket at the end", 1 << 30, None, 280.0, 1293.0, 642.0),
        OverlapRow("buckets, last layer first", 4 << 20, None, 280.0, 725.0, 74.0),
        OverlapRow("fused by readiness (cycle time)", 4 << 20, 5.0, 280.0, 700.0, 49.0),
    ]
    text = report_markdown(rows, args)
    assert "6 Dense(1024) layers, batch 1024; 11.0 ms of simulated link delay per MiB" in text
    assert "| one bucket at the end | 1073741824 | - | 280 | 1293 | 642 |" in text
    assert "| buckets, last layer first | 4194304 | - | 280 | 725 | 74 |" in text
    assert "| fused by readiness (cycle time) | 4194304 | 5 | 280 | 700 | 49 |" in text
