"""The CUDA backend's step without a GPU (tests/cpp/cuda_emulate.cpp): the kernel body of
csrc/cuda/ssm_cuda_step.hpp and the host driver of csrc/cuda/ssm_cuda_host.hpp, compiled by the C++
compiler and run on the CPU (one host thread per block, and several host threads per block meeting
at a real barrier), must give the CPU kernel's bits for every output and final state: three configs,
fp32 and fp16 (against the CPU kernel on binary16-rounded matrices), padding rows, repeated slots
(waves), resets, and launches over many tiles. What it cannot check is the GPU's own part:
tests/test_cuda_compile.py compiles the .cu files, tests/test_cuda.py runs them on a device."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
# The CPU kernel's flags (CMakeLists.txt): no contraction, so the emulation's bits are comparable.
FLAGS = ["-O1", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-pthread"]
SOURCES = [ROOT / "tests" / "cpp" / "cuda_emulate.cpp", CSRC / "ssm.cpp", CSRC / "ssm_kernel.cpp",
           CSRC / "cuda" / "ssm_cuda_host.cpp"]


pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


def _build(tmp_path: Path, extra: list[str]) -> subprocess.CompletedProcess:
    exe = tmp_path / "cuda_emulate"
    build = subprocess.run(["g++", *FLAGS, *extra, f"-I{CSRC}", *map(str, SOURCES), "-o", str(exe)],
                           capture_output=True, text=True, timeout=600)
    if build.returncode != 0:
        return build
    return subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)


def _all_checks_passed(run: subprocess.CompletedProcess) -> None:
    assert run.returncode == 0, run.stdout + run.stderr
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith("cuda_emulate: ") and last.endswith(" checks, 0 failures"), run.stdout
    assert int(last.split()[1]) >= 30, run.stdout  # every check ran


def test_the_cuda_step_emulated_on_the_cpu_gives_the_cpu_kernels_bits(tmp_path):
    _all_checks_passed(_build(tmp_path, []))


@pytest.mark.slow
def test_the_emulated_blocks_threads_do_not_race(tmp_path):
    """The same run under ThreadSanitizer: where several host threads play a block, a phase that
    reads what another thread writes without a barrier between them is reported even when the
    bits happen to agree."""
    probe = subprocess.run(["g++", "-fsanitize=thread", "-x", "c++", "-", "-o", str(tmp_path / "probe")],
                           input="int main() { return 0; }", capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"g++ cannot build with -fsanitize=thread here: {probe.stderr.strip()[:200]}")
    run = _build(tmp_path, ["-fsanitize=thread", "-g"])
    assert "ThreadSanitizer" not in run.stderr, run.stderr[:4000]
    _all_checks_passed(run)
