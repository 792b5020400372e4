"""Benchmarks: figures are reported (extra_info, printed, ratios at the end), never asserted."""

from __future__ import annotations

import os
import platform

_RATES: dict[str, dict[str, float]] = {}
_UNITS: dict[str, str] = {}


def record_rate(group: str, variant: str, rate: float, unit: str = "quotes/s") -> None:
    """Keep a throughput so the session summary can print ratios within one run."""
    _RATES.setdefault(group, {})[variant] = rate
    _UNITS[group] = unit


def pytest_terminal_summary(terminalreporter):
    if not _RATES:
        return
    tr = terminalreporter
    tr.section("throughput ratios (same run)")
    for group, rates in _RATES.items():
        ref_name, ref = next(iter(rates.items()))
        for name, rate in rates.items():
            if name != ref_name:
                tr.write_line(f"{group}: {ref_name} / {name} = {ref / rate:,.1f}x  ({_rate(ref)} vs {_rate(rate)} {_UNITS[group]})")


def _rate(x: float) -> str:
    # Configurations per second are single digits: whole numbers would print "3 vs 1".
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def pytest_benchmark_update_machine_info(config, machine_info):
    from engine import _core

    machine_info["nextick_core"] = _core.build_info()
    machine_info["cpu_count"] = os.cpu_count()
    try:
        with open("/proc/cpuinfo") as f:
            machine_info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        machine_info["cpu_model"] = platform.processor()
