"""The SSM kernel computes the same bits whatever vector unit it is built for (csrc/ssm.hpp): no FMA
contraction, a fixed summation order, exp/log/silu as plain IEEE arithmetic. tests/cpp/ssm_bits.cpp
runs awkward batches (padding rows, repeated slots, resets) through three configs and hashes every
output and final state bit; here it is compiled for each x86-64 level this host can run and the
hashes must agree. A kernel change that lets the vector width leak into a result fails here."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "cpp" / "ssm_bits.cpp"
FLAGS = ["-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno"]  # as CMakeLists.txt builds _core

pytestmark = [
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 instruction set levels only"),
    pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++"),
]


def _host_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def test_same_bits_on_every_vector_width(tmp_path):
    flags = _host_flags()
    targets = {"portable (SSE2)": "-march=x86-64", "native": "-march=native"}
    if {"avx2", "fma"} <= flags:
        targets["AVX2"] = "-march=x86-64-v3"
    builds = {}
    for name, march in targets.items():
        exe = tmp_path / name.split()[0]
        cmd = ["g++", *FLAGS, march, f"-I{ROOT / 'csrc'}", str(DRIVER), str(ROOT / "csrc" / "ssm.cpp"), "-o", str(exe)]
        builds[name] = (exe, subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True))
    hashes = {}
    for name, (exe, proc) in builds.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name} build failed:\n{err}"
        run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120, check=True)
        hashes[name] = dict(line.split() for line in run.stdout.splitlines())
    assert set(hashes["native"]) == {"default", "odd", "s4d"}
    for name, got in hashes.items():
        assert got == hashes["portable (SSE2)"], f"{name} differs from the portable build: {got} vs {hashes['portable (SSE2)']}"
