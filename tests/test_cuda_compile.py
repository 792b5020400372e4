"""The CUDA backend builds on machines without a GPU, so a broken kernel cannot land unseen.

CMake configures the project with NEXTICK_CUDA=ON and builds what the CUDA build adds, with the
flags the build uses (warnings are errors): every csrc/cuda/*.cu for sm_80 and sm_90 (nvcc), the
backend's host code, and the bindings that expose engine._core.CudaSsmModel. Then
tests/cpp/cuda_smoke.cpp links those objects with the CPU core and the static CUDA runtime and runs:
without a device it checks the constructor's errors and the refusal to run; with one it compares the
device's bits with the CPU kernel's.

nvcc comes from CUDACXX, else the cuda-build extra that `make test` installs (pip wheels), else PATH,
CUDA_HOME, CUDA_PATH or /usr/local/cuda. Where none is found the tests skip, except in CI (CI set),
where that is a failure: CI must compile the kernels."""

from __future__ import annotations

import os
import sys
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
CU_FILES = sorted((CSRC / "cuda").glob("*.cu"))
ARCHS = "80-real;90"  # SASS for sm_80 and sm_90, and sm_90's PTX


def find_nvcc() -> tuple[Path | None, str]:
    """The nvcc to use and where it was found."""
    candidates: list[tuple[Path, str]] = []
    if os.environ.get("CUDACXX"):
        candidates.append((Path(os.environ["CUDACXX"]), "CUDACXX"))
    try:
        import nvidia  # the NVIDIA wheels' namespace package

        for base in nvidia.__path__:
            candidates += [(p, "the cuda-build extra") for p in sorted(Path(base).glob("cu*/bin/nvcc"))]
    except ImportError:
        pass
    if shutil.which("nvcc"):
        candidates.append((Path(shutil.which("nvcc")), "PATH"))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append((Path(os.environ[var]) / "bin" / "nvcc", var))
    candidates.append((Path("/usr/local/cuda/bin/nvcc"), "/usr/local/cuda"))
    for path, source in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path.resolve(), source
    return None, ""


NVCC, NVCC_FROM = find_nvcc()


def _tool(name: str) -> str | None:
    """A build tool from this environment's bin folder (where `make test` installs cmake and ninja), else PATH."""
    here = Path(sysconfig.get_path("scripts")) / name
    return str(here) if here.is_file() else shutil.which(name)


@pytest.fixture(scope="module")
def nvcc() -> Path:
    if NVCC is None:
        why = ("no nvcc: none in CUDACXX, the cuda-build extra (pip install -e '.[cuda-build]'), PATH, CUDA_HOME, "
               "CUDA_PATH or /usr/local/cuda")
        if os.environ.get("CI"):
            pytest.fail(f"CI must compile the CUDA sources, but there is {why}")
        pytest.skip(why)
    if _tool("cmake") is None or _tool("ninja") is None or shutil.which("g++") is None:
        pytest.skip("needs cmake, ninja and g++ (make test installs cmake and ninja)")
    return NVCC


@pytest.fixture(scope="module")
def cuda_build(nvcc, tmp_path_factory) -> Path:
    """A CMake build folder configured with NEXTICK_CUDA=ON, with the CUDA objects and the bindings built."""
    import pybind11

    build = tmp_path_factory.mktemp("cuda-build")
    configure = subprocess.run(
        [_tool("cmake"), "-S", str(ROOT), "-B", str(build), "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}",
         "-DNEXTICK_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DCMAKE_CUDA_ARCHITECTURES={ARCHS}",
         f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DPython_EXECUTABLE={sys.executable}",
         "-DSKBUILD_PROJECT_VERSION=0.0.0"],
        capture_output=True, text=True, timeout=600)
    assert configure.returncode == 0, f"cmake -DNEXTICK_CUDA=ON with {nvcc} ({NVCC_FROM}):\n{configure.stdout}\n{configure.stderr}"
    targets = ["nextick_cuda", "CMakeFiles/_core.dir/csrc/cuda/bind_cuda.cpp.o", "CMakeFiles/_core.dir/csrc/bindings.cpp.o"]
    compiled = subprocess.run([_tool("cmake"), "--build", str(build), "--target", *targets],
                              capture_output=True, text=True, timeout=900)
    assert compiled.returncode == 0, f"building the CUDA backend with {nvcc} ({NVCC_FROM}):\n{compiled.stdout}\n{compiled.stderr}"
    return build


def test_there_are_cuda_sources():
    assert CU_FILES, "csrc/cuda has no .cu file: the CUDA backend's kernel is missing"


def test_every_cuda_source_compiles_for_sm80_and_sm90(cuda_build, nvcc):
    for cu in CU_FILES:
        obj = cuda_build / "CMakeFiles" / "nextick_cuda.dir" / "csrc" / "cuda" / f"{cu.name}.o"
        assert obj.is_file(), f"{cu.name} was not compiled"
        # The object holds device code for both architectures (cuobjdump is not in the wheels:
        # the fatbinary's ELF names each SASS target).
        data = obj.read_bytes()
        for arch in (b"sm_80", b"sm_90"):
            assert arch in data, f"{cu.name}.o has no {arch.decode()} code"


def test_the_cuda_backend_links_and_runs_what_runs_here(cuda_build, nvcc, tmp_path):
    """Linked with the CPU core and the static CUDA runtime; without a device it checks its arguments
    and refuses to run; with one it computes the CPU kernel's bits."""
    objs = sorted((cuda_build / "CMakeFiles" / "nextick_cuda.dir").rglob("*.o"))
    exe = tmp_path / "cuda_smoke"
    flags = ["-O1", "-std=c++17", "-ffp-contract=off", "-fno-math-errno"]
    sources = [ROOT / "tests" / "cpp" / "cuda_smoke.cpp", CSRC / "ssm.cpp", CSRC / "ssm_kernel.cpp"]
    host_objs = []
    for src in sources:
        o = tmp_path / f"{src.stem}.o"
        subprocess.run(["g++", *flags, f"-I{CSRC}", "-c", str(src), "-o", str(o)], check=True, capture_output=True,
                       timeout=600)
        host_objs.append(o)
    link = subprocess.run([str(nvcc), "-o", str(exe), *map(str, objs), *map(str, host_objs)],
                          capture_output=True, text=True, timeout=600)
    assert link.returncode == 0, link.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("cuda_smoke: ok"), run.stdout + run.stderr
