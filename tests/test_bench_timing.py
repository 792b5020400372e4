"""bench/_util.py's loop timers: what they call and in which order. Speed is never asserted here; the
tests check the schedule that makes the figures comparable (interleaved rounds, rotation, a warm call
before each timed loop) and that every round is counted."""

from __future__ import annotations

import pytest

from bench._util import time_per_call, time_rounds


class Recorder:
    """A function that logs its name on a shared list each time it is called."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def __call__(self) -> None:
        self.log.append(self.name)


def runs(log: list[str]) -> list[tuple[str, int]]:
    """The log as (name, consecutive calls) runs."""
    out: list[tuple[str, int]] = []
    for name in log:
        if out and out[-1][0] == name:
            out[-1] = (name, out[-1][1] + 1)
        else:
            out.append((name, 1))
    return out


@pytest.mark.parametrize("rounds", [1, 4, 7])
def test_time_rounds_interleaves_and_rotates(rounds):
    log: list[str] = []
    fns = [Recorder(name, log) for name in "abc"]
    res = time_rounds(fns, rounds=rounds, round_s=1e-4)
    assert [r["rounds"] for r in res] == [rounds] * 3
    assert all(0 < r["best"] <= r["median"] for r in res)
    # Set-up: each function warmed and calibrated on its own, a, then b, then c.
    timed = runs(log)
    setup, timed = timed[:3], timed[3:]
    assert [name for name, _ in setup] == ["a", "b", "c"]
    # Then one run per function per round (its untimed call and its timed loop are one run), the
    # order rotating: round r starts with function r % 3.
    assert len(timed) == 3 * rounds
    for r in range(rounds):
        names = [name for name, _ in timed[3 * r:3 * r + 3]]
        assert names == [("abc" * 2)[(r % 3) + j] for j in range(3)]
    # Each function's runs have the same length: one warm call plus the calibrated loop.
    for name in "abc":
        lengths = {n for nm, n in timed if nm == name}
        assert len(lengths) == 1 and lengths.pop() >= 2


def test_time_rounds_reports_per_call_time_of_each_function():
    import time

    def spin(seconds: float):
        def fn() -> None:
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                pass
        return fn

    short, long_ = time_rounds([spin(2e-5), spin(2e-4)], rounds=3, round_s=2e-3)
    # A lower bound only (a loaded machine only makes calls slower): each call spins at least that long.
    assert short["best"] >= 2e-5 and long_["best"] >= 2e-4


def test_time_per_call_calls_the_function_in_loops():
    log: list[str] = []
    best = time_per_call(Recorder("a", log), min_s=1e-3, repeats=3)
    assert best > 0 and len(log) >= 1 + 3
