"""Benchmarks: figures are reported (extra_info, printed), never asserted."""

from __future__ import annotations

import os
import platform


def pytest_benchmark_update_machine_info(config, machine_info):
    from engine import _core

    machine_info["nextick_core"] = _core.build_info()
    machine_info["cpu_count"] = os.cpu_count()
    try:
        with open("/proc/cpuinfo") as f:
            machine_info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        machine_info["cpu_model"] = platform.processor()
