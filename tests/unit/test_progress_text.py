"""Job status lines: elapsed time and the estimate of the time left, on a fake clock."""

from __future__ import annotations

from app.progress_text import ProgressText, duration


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_estimate_from_the_pace_of_the_current_phase():
    clock = Clock()
    text = ProgressText(clock)
    assert text("sinks", 0, 16) == "sinks: 0/16 · 0 s elapsed"  # no pace yet, no estimate
    clock.now += 10
    assert text("sinks", 4, 16) == "sinks: 4/16 · 10 s elapsed · about 30 s left"  # 2.5 s/step
    clock.now += 30
    assert text("sinks", 16, 16) == "sinks: 16/16 · 40 s elapsed"
    # a new phase has its own pace: 41 runs of the causal check at 2 s a run
    assert text("causal check", 0, 41) == "causal check: 0/41 · 40 s elapsed"
    clock.now += 2
    assert (
        text("causal check", 1, 41) == "causal check: 1/41 · 42 s elapsed · about 1 min 20 s left"
    )


def test_a_count_going_back_starts_a_new_phase():
    clock = Clock()
    text = ProgressText(clock)
    text("layer", 0, 30)
    clock.now += 30
    text("layer", 30, 30)  # one forward done at 1 s a layer
    clock.now += 90
    # the next forward starts again at layer 1: its pace is measured from there, not from 0
    assert text("layer", 1, 30) == "layer: 1/30 · 2 min 00 s elapsed"
    clock.now += 3
    assert text("layer", 4, 30) == "layer: 4/30 · 2 min 03 s elapsed · about 26 s left"


def test_duration():
    assert [duration(s) for s in (0, 59.4, 60, 125, -3)] == [
        "0 s",
        "59 s",
        "1 min 00 s",
        "2 min 05 s",
        "0 s",
    ]
