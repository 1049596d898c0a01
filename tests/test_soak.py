"""The soak machinery (bench/soak.py, `make soak`) run for a few seconds, so it keeps working.

No timing is asserted: only that a short run produces a report with every field the
full run's documentation relies on, that every call kind ran, and that nothing went
wrong — no unexpected status, no wrong answer, every acknowledged write read back and
every broken policy edit refused with the old policy serving.
"""

from __future__ import annotations

from pathlib import Path

from bench.soak import KINDS, SoakConfig, render, run_soak, slope_per_min


def test_slope_is_per_minute() -> None:
    assert slope_per_min([(0, 10.0), (60, 12.0), (120, 14.0)]) == 2.0
    assert slope_per_min([(0, 5.0)]) == 0.0


def test_a_short_soak_reports_every_field_and_no_unexpected_errors(tmp_path: Path) -> None:
    # A fixed rate instead of the calibration; a few seconds say nothing about memory.
    cfg = SoakConfig(minutes=0.08, rate=150, interval_s=1.5, clients=1, orgs=3,
                     reload_every_s=1.5, concurrency=8, compare_sample=200,
                     max_growth_mib_per_min=1e9)
    report = run_soak(cfg, tmp_path, log=lambda _: None)

    for key in ("peak_calls_per_s", "target_calls_per_s", "intervals", "totals", "errors",
                "error_rate_unexpected", "rss_slope_mib_per_min", "redis_slope_mib_per_min",
                "metric_series_growth", "reloads", "correctness", "verdict"):
        assert key in report, key
    assert report["intervals"], "no interval was recorded"
    for row in report["intervals"]:
        for key in ("t_s", "calls_per_s", "kinds", "rss_mib", "redis_used_mib",
                    "index_revision", "metric_series"):
            assert key in row, key
        for stats in row["kinds"].values():
            assert {"calls_per_s", "errors", "p50_ms", "p99_ms", "max_ms"} <= stats.keys()
    assert set(report["totals"]) <= set(KINDS)
    assert {"Check", "CheckBulk"} <= set(report["totals"])
    assert report["errors"].get("unexpected", {}) == {}, report["errors"]
    assert report["wrong_answers"] == []
    assert [r["edit"] for r in report["reloads"]][:2] == ["good", "broken"]
    assert all(r["ok"] for r in report["reloads"]), report["reloads"]
    corr = report["correctness"]
    assert corr["problems"] == [], corr["problems"]
    assert corr["writes_present_checked"] > 0 and corr["checks_compared"] == 200
    assert report["ok"], report["verdict"]
    assert "| t (s) |" in render(report)
