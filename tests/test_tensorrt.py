"""The TensorRT backends (engine/model/tensorrt_backend.py).

Everywhere: the fp16 step graph (every Gemm in binary16, the rest fp32) run in ONNX Runtime on the
CPU stays within FP16_RTOL of the fp32 kernel and really moves off it; the engine cache key names
everything a plan depends on; choosing the backend without TensorRT, CuPy or a GPU says which and
how to install. With a GPU and TensorRT: parity of fp32 (PARITY_RTOL) and fp16 (FP16_RTOL) against
the C++ kernel, with resets, padding and states kept on the device, and a cached plan reused.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.model.backend import backend_names, make_backend
from engine.model.onnx_format import PARITY_RTOL, sibling_path
from engine.model.tensorrt_backend import (
    FP16_RTOL,
    engine_key,
    engine_path,
    fp16_step_graph,
    tensorrt_installed,
)
from engine.model.weights import DEFAULT_MODEL_PATH, load_model

onnx = pytest.importorskip("onnx")
PACKAGED = load_model(None)
GRAPH = sibling_path(DEFAULT_MODEL_PATH).read_bytes()


def _gpu_ready() -> bool:
    if not tensorrt_installed():
        return False
    import cupy

    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no driver
        return False


def test_fp16_graph_puts_every_gemm_in_binary16_and_keeps_the_interface():
    before = onnx.load_from_string(GRAPH)
    after = onnx.load_from_string(fp16_step_graph(GRAPH))
    gemms = [n for n in after.graph.node if n.op_type == "Gemm"]
    assert len(gemms) == sum(n.op_type == "Gemm" for n in before.graph.node) > 0
    half = {t.name for t in after.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    for g in gemms:
        assert all(name in half for name in g.input[1:]), g.name
    # Inputs, outputs and every non-Gemm op are untouched: the backend binds the same float32 tensors.
    assert [(i.name, i.type.tensor_type.elem_type) for i in after.graph.input] == \
        [(i.name, i.type.tensor_type.elem_type) for i in before.graph.input]
    assert [(o.name, o.type.tensor_type.elem_type) for o in after.graph.output] == \
        [(o.name, o.type.tensor_type.elem_type) for o in before.graph.output]
    others = lambda m: sorted(n.op_type for n in m.graph.node if n.op_type not in ("Gemm", "Cast"))  # noqa: E731
    assert others(after) == others(before)
    assert {p.key: p.value for p in after.metadata_props}["precision"] == "fp16"


def test_fp16_graph_parity_in_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    from engine.model.onnx_backend import OnnxRuntimeBackend, parity_vs

    path = tmp_path / "fp16.onnx"
    path.write_bytes(fp16_step_graph(GRAPH))
    half = OnnxRuntimeBackend(PACKAGED, 8, onnx_path=path)
    err = parity_vs(half, PACKAGED.core_model(8), half.specs, steps=96)
    # Within the stated fp16 tolerance, and measurably off fp32: the rewrite took effect.
    assert PARITY_RTOL < err <= FP16_RTOL


def test_engine_key_names_everything_a_plan_depends_on():
    base = dict(graph=GRAPH, precision="fp32", max_batch=16384, opt_batch=1024, trt_version="11.4.0", device="NVIDIA H100")
    key = engine_key(**base)
    assert key == engine_key(**base) and len(key) == 64
    for name, other in [("graph", GRAPH + b" "), ("precision", "fp16"), ("max_batch", 1024), ("opt_batch", 16),
                        ("trt_version", "11.5.0"), ("device", "NVIDIA H200")]:
        assert engine_key(**{**base, name: other}) != key, name
    assert engine_path(key).name == f"{key}.plan" and engine_path(key).parent.name == "tensorrt"


def test_backends_are_listed_and_say_what_is_missing():
    assert {"tensorrt", "tensorrt-fp16"} <= set(backend_names())
    if _gpu_ready():
        pytest.skip("TensorRT, CuPy and a GPU are present: nothing is missing")
    with pytest.raises(ValueError, match=r"nextick\[tensorrt\]|needs an NVIDIA GPU"):
        make_backend("tensorrt", PACKAGED, 4)


gpu = pytest.mark.skipif(not _gpu_ready(), reason="needs an NVIDIA GPU with TensorRT and CuPy (pip install 'nextick[tensorrt]')")


@gpu
@pytest.mark.parametrize("name, rtol", [("tensorrt", PARITY_RTOL), ("tensorrt-fp16", FP16_RTOL)])
def test_gpu_parity_against_the_kernel(name, rtol, tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTICK_CACHE_DIR", str(tmp_path))
    from engine.model.onnx_backend import parity_vs

    backend = make_backend(name, PACKAGED, 8)
    assert parity_vs(backend, PACKAGED.core_model(8), backend.specs, steps=96) <= rtol
    # Padding rows get NaN and touch nothing; a second backend reuses the cached plan.
    out = backend.step(np.array([-1, 0], np.int32), np.zeros((2, 5), np.float32), np.zeros(2, np.uint8))
    assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()
    plan = backend.plan_path
    assert plan.is_file()
    mtime = plan.stat().st_mtime_ns
    assert make_backend(name, PACKAGED, 8).plan_path == plan and plan.stat().st_mtime_ns == mtime
