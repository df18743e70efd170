"""Tracking benchmark: percentiles, the read-back count, the report, and one small real run on SQLite."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from medfake import cli
from medfake.bench.tracking import RETRY_ENV, count_read_back, error_kind, metric_key, metric_value
from medfake.bench.tracking_report import Fault, ReadBack, Scenario, percentile, render_markdown


def test_percentile_matches_numpy_linear():
    values = [0.3, 0.1, 0.9, 0.4, 0.2, 0.7, 0.05]
    for q in (0, 50, 95, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert np.isnan(percentile([], 50))


def _complete(workers: int, steps: int, metrics: int) -> dict:
    return {w: {metric_key(j): [(s, metric_value(w, s, j)) for s in range(steps)] for j in range(metrics)}
            for w in range(workers)}


def test_read_back_counts_lost_duplicate_and_wrong_entries():
    histories = _complete(2, 4, 3)
    assert count_read_back(histories, 2, 4, 3) == ReadBack(expected=24, found=24, lost=0, duplicates=0, wrong=0)

    key = metric_key(1)
    histories[0][key] = [h for h in histories[0][key] if h[0] != 2]  # one step missing
    histories[1][key].append((3, metric_value(1, 3, 1)))  # a retried write stored twice
    histories[1][metric_key(0)][0] = (0, 42.0)  # a value that was never logged
    del histories[1][metric_key(2)]  # a whole metric missing
    counted = count_read_back(histories, 2, 4, 3)
    assert (counted.lost, counted.duplicates, counted.wrong) == (1 + 1 + 4, 1, 1)
    assert counted.found == 24 - counted.lost


def test_read_back_of_a_worker_without_a_run_loses_everything():
    histories = _complete(3, 2, 2)
    del histories[2]
    assert count_read_back(histories, 3, 2, 2).lost == 4


def test_error_kind_names_sqlite_lock_and_keeps_one_line():
    assert error_kind(RuntimeError("(sqlite3.OperationalError) database is locked\n[SQL: INSERT …]")) == "database is locked"
    assert error_kind(ValueError("boom\nsecond line")) == "ValueError: boom"


def _scenario(name: str, lost: int, fault: Fault | None = None) -> Scenario:
    s = Scenario(name, f"{name} backend", 2, 3, 4, wall_s=1.5, latencies_s=[0.01, 0.02, 0.03, 0.04, 0.05, 0.45])
    s.errors = Counter({"database is locked": 2}) if name == "sqlite" else Counter()
    s.read_back = ReadBack(expected=24, found=24 - lost, lost=lost)
    s.runs_finished, s.fault = 2, fault
    return s


def test_report_states_load_machine_synthetic_data_retries_and_figures():
    fault = Fault(killed_at_s=1.0, back_at_s=9.0, outage_s=8.0, calls_spanning=3, slowest_spanning_s=8.2)
    text = render_markdown([_scenario("sqlite", 2), _scenario("fault", 0, fault)], command="medfake bench tracking",
                           machine="Test CPU, 2 cores", load_start=(3.5, 2.0, 1.0), load_end=(4.25, 2.5, 1.5),
                           versions="MLflow x", date="2026-01-01", retries=RETRY_ENV)
    assert "synthetic metrics" in text and "Test CPU, 2 cores" in text and "`medfake bench tracking`" in text
    assert "3.50 / 2.00 / 1.00" in text and "4.25 / 2.50 / 1.50" in text
    for name, value in RETRY_ENV.items():
        assert f"`{name}={value}`" in text
    sqlite_row = next(line for line in text.splitlines() if line.startswith("| sqlite |"))
    cells = [c.strip() for c in sqlite_row.strip("|").split("|")]
    # p50 of the six latencies is 35 ms, p95 350 ms (linear), max 450 ms; two errors; two lost
    assert cells[5:9] == ["35", "350", "450", "2"] and cells[12] == "**2**"
    assert "2 × database is locked" in text
    assert "down 8.0 s" in text and "3 `log_metrics` calls" in text and "**0** of 24 (goal 0: met)" in text


def test_unknown_scenario_is_a_one_line_error(capsys):
    assert cli.main(["bench", "tracking", "--scenarios", "sqlite,cloud"]) == 2
    assert "cloud" in capsys.readouterr().err


@pytest.mark.slow  # ~30 s on the loaded 2-core machine (two spawned interpreters importing MLflow, a new SQLite schema)
def test_small_real_run_on_sqlite_loses_nothing(tmp_path, capsys):
    report = tmp_path / "tracking.md"
    code = cli.main(["bench", "tracking", "--scenarios", "sqlite", "--workers", "2", "--steps", "5",
                     "--metrics", "3", "--report", str(report)])
    assert code == 0, capsys.readouterr().err
    row = next(line for line in report.read_text().splitlines() if line.startswith("| sqlite |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "2 × 5 × 3" and cells[4] == "10"  # ten log_metrics calls timed
    assert cells[10:16] == ["30", "30", "**0**", "0", "0", "2/2"], row
