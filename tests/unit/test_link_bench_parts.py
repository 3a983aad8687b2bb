"""``tfyarn bench links``: its rate parsing, tbf bucket and report (the measurement itself
needs root and namespaces: tests/integration/test_link_bench.py runs it small)."""

from __future__ import annotations

import pytest

from benchmarks.link_bench import LinkRow, parse_rate, report_markdown, tbf_burst


def test_rates_parse_as_tc_writes_them() -> None:
    assert parse_rate("1gbit") == 1e9
    assert parse_rate("25GBIT") == 25e9
    assert parse_rate("500mbit") == 5e8
    assert parse_rate("none") is None
    for bad in ("fast", "0gbit", "-1gbit", "10gb", ""):
        with pytest.raises(ValueError, match="bad rate"):
            parse_rate(bad)


def test_the_bucket_covers_a_kernel_tick_at_any_rate() -> None:
    # HZ is at most 1000: a bucket below rate/8/1000 bytes caps tbf under its rate
    for bits in (1e8, 1e9, 1e10, 2.5e10):
        assert tbf_burst(bits) >= bits / 8 / 1000
    assert tbf_burst(1e6) == 256 << 10  # never below a few jumbo frames
    assert tbf_burst(1e10) == 12_500_000


def test_the_report_states_the_baseline_and_every_row() -> None:
    rows = [
        LinkRow("1gbit", "none", 25_000_000, 0.9, 100_000_000, 0.94, 1.0),
        LinkRow("1gbit", "fp16", 25_000_000, 0.45, 50_000_000, 0.94, 2.0),
    ]
    assert rows[0].algo_gbit == pytest.approx(25e6 * 32 / 0.9 / 1e9)
    text = report_markdown(rows, 1500)
    assert "25M float32 gradient values" in text and "MTU 1500" in text
    assert "| 1gbit | 0.94 | none | 900 | 100.0 | 0.89 | 1.00x |" in text
    assert "| 1gbit | 0.94 | fp16 | 450 | 50.0 | 1.78 | 2.00x |" in text
