"""The SSM kernel computes the same bits whatever vector unit it is built for (csrc/ssm.hpp): no FMA
contraction, a fixed summation order, exp/log/silu as plain IEEE arithmetic.

Two checks. tests/cpp/ssm_bits.cpp runs awkward batches (padding rows, repeated slots, resets)
through three configs and hashes every output and final state bit; it is compiled for each x86-64
level this host can run (and with an Intel tuning, which once changed the code GCC emitted) and the
hashes must agree. And the variants compiled into engine._core, chosen at run time
(SsmModel.kernels()), must give the same bits as each other on the same awkward batches. A kernel
change that lets the vector width leak into a result fails here."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "cpp" / "ssm_bits.cpp"
FLAGS = ["-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-fno-tree-loop-distribute-patterns"]  # as CMakeLists.txt builds the kernel
SOURCES = [ROOT / "csrc" / "ssm.cpp", ROOT / "csrc" / "ssm_kernel.cpp"]

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
    targets = {"portable (SSE2)": ["-march=x86-64"], "native": ["-march=native"]}
    if {"avx2", "fma"} <= flags:
        targets["AVX2"] = ["-march=x86-64-v3"]
    if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= flags:
        targets["AVX-512 tuned for Intel"] = ["-march=x86-64-v4", "-mtune=icelake-server"]
    builds = {}
    for name, march in targets.items():
        exe = tmp_path / name.split()[0].replace("-", "")
        cmd = ["g++", *FLAGS, *march, f"-I{ROOT / 'csrc'}", str(DRIVER), *map(str, SOURCES), "-o", str(exe)]
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


def _awkward_run(core_model, cfg, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Batches with padding rows, repeated slots and resets; the outputs and every final state."""
    rng = np.random.default_rng(seed)
    outs = []
    n_slots = core_model.n_slots
    for n in [1, 3, 4, 5, 16, 37, 64, 2, 1, 9, 8, 7, 6] * 3:
        slots = np.where(rng.random(n) < 0.1, -1, rng.integers(0, n_slots, n)).astype(np.int32)
        x = (3.0 * rng.standard_normal((n, cfg["n_features"]))).astype(np.float32)
        reset = (rng.random(n) > 0.9).astype(np.uint8)
        out = np.empty((n, cfg["n_out"]), np.float32)
        core_model.step(slots, x, reset, out)
        outs.append(out)
    states = []
    for layer in range(cfg["n_layers"]):
        states.append(np.array(core_model.ssm_state(layer)))
        if cfg["kind"] == "mamba2":
            states.append(np.array(core_model.conv_state(layer)))
    return np.concatenate(outs), states


CONFIGS = {
    "default": {},
    "odd": {"d_model": 24, "d_inner": 36, "headdim": 9, "nheads": 4, "ngroups": 2, "d_state": 5, "d_conv": 3, "n_out": 3},
    "s4d": {"kind": "s4d"},
}


@pytest.mark.parametrize("name", CONFIGS)
def test_runtime_kernel_variants_give_the_same_bits(name):
    from engine import _core
    from engine.model.config import SSMConfig

    kernels = _core.SsmModel.kernels()
    assert kernels, "no kernel variant runs on this CPU"
    cfg = {**SSMConfig().core_dict(), **CONFIGS[name]}
    rng = np.random.default_rng(7)
    tensors = {}
    for key, shape in _core.SsmModel.tensor_shapes(cfg).items():
        v = 0.3 * rng.uniform(-1, 1, shape)
        if "norm" in key:
            v = 1.0 + 0.1 * rng.uniform(-1, 1, shape)
        if key.endswith(".A"):
            v = -(0.5 + 0.4 * rng.uniform(-1, 1, shape))
        if key.endswith(".dA"):
            v = 0.5 + 0.4 * rng.uniform(-1, 1, shape)
        tensors[key] = v.astype(np.float32)
    runs = {}
    for kernel in kernels:
        model = _core.SsmModel(cfg, tensors, 37)
        model.set_kernel(kernel)
        assert model.kernel == kernel
        runs[kernel] = _awkward_run(model, cfg, seed=3)
    first = kernels[-1]
    out0, states0 = runs[first]
    assert np.isfinite(out0[~np.isnan(out0)]).all()
    for kernel, (out, states) in runs.items():
        assert out.view(np.uint32).tobytes() == out0.view(np.uint32).tobytes(), f"{kernel} outputs differ from {first}"
        for a, b in zip(states, states0):
            assert a.view(np.uint32).tobytes() == b.view(np.uint32).tobytes(), f"{kernel} states differ from {first}"


def test_unknown_kernel_is_refused_with_the_choices():
    from engine import _core
    from engine.model.config import SSMConfig

    cfg = SSMConfig().core_dict()
    rng = np.random.default_rng(0)
    tensors = {k: rng.uniform(-0.1, 0.1, s).astype(np.float32) for k, s in _core.SsmModel.tensor_shapes(cfg).items()}
    model = _core.SsmModel(cfg, tensors, 1)
    assert model.kernel == _core.SsmModel.kernels()[0]  # auto picks the best this CPU runs
    with pytest.raises(ValueError, match="one of: " + ", ".join(_core.SsmModel.kernels())):
        model.set_kernel("avx9000")


def test_the_avx512_silu_matches_the_scalar_one_bit_for_bit(tmp_path):
    if not {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= _host_flags():
        pytest.skip("needs an AVX-512 host")
    exe = tmp_path / "vmath_bits"
    subprocess.run(["g++", *FLAGS, "-march=x86-64-v4", f"-I{ROOT / 'csrc'}", str(ROOT / "tests" / "cpp" / "vmath_bits.cpp"),
                    "-o", str(exe)], check=True, capture_output=True, text=True, timeout=300)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout
    assert "checked 50331648 mismatches 0" in run.stdout
