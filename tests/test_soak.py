"""The soak benchmark's summary: the changes it reports from a run's epochs."""
from __future__ import annotations

import pytest

from benchmarks.soak import summary


def run(times: list[float]) -> dict:
    end, epochs = 0.0, []
    for i, t in enumerate(times):
        end += t
        epochs.append({"epoch": i + 1, "end_s": end, "epoch_s": t, "peak_rss_kib": 1024 * (100 + i),
                       "folder": {"checkpoints": 1000 + i, "events": 2**20, "files": 4}})
    return {"epochs": epochs}


def test_a_steady_run_is_flat_by_every_measure_and_one_fast_epoch_two_is_not_a_trend():
    s = summary(run([20.0] + [10.0] * 100))
    assert s["epoch_time_change"] == s["epoch_time_trend"] == s["minutes_change"] == 0
    s = summary(run([20.0, 5.0] + [10.0] * 100))  # epoch 2 fast: the naive change is +100%
    assert s["epoch_time_change"] == 1.0 and abs(s["epoch_time_trend"]) < 0.05 and s["minutes_change"] == 0


def test_a_run_that_slows_steadily_shows_in_the_trend_and_the_minutes():
    s = summary(run([20.0] + [10.0 + 0.1 * i for i in range(101)]))  # 10 s to 20 s
    assert 0.9 < s["epoch_time_trend"] < 1.1  # a line in wall time, through times linear in epochs
    assert s["minutes_change"] > 0.5 and s["rss_change"] == pytest.approx(201 / 101 - 1)  # epoch 2 at 101 MiB, the last at 201
