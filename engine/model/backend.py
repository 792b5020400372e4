"""The model-backend seam: how the engine runs a signal model, whatever runs it.

The engine's tick loop (csrc/backtester.hpp) holds a backend, not a concrete model: a pool of
per-instrument state slots stepped in batches with a reset mask. The compiled C++ SSM kernel is the
first backend (``"cpu"``: ``engine._core.SsmModel``, whose kernel variant for this CPU is picked at
run time); ``"onnxruntime"`` runs the model's exported ONNX step (engine/model/onnx_backend.py, the
``onnx`` extra); ``"cuda"`` and ``"cuda-fp16"`` (``engine._core.CudaSsmModel``) are there in a core
built with the CUDA backend; others (TensorRT) register a factory here under their name and run
behind the same calls, so a strategy cannot tell which one ran except by speed::

    from engine.model.backend import make_backend
    from engine.model.weights import load_model

    backend = make_backend("cpu", load_model(), n_slots=3)
    out = backend.step(slots, x, reset)  # int32[n], float32[n, 5], uint8[n] -> float32[n, 1]

A backend may also be written in Python: any object with the attributes of ``ModelBackend`` below
can be handed to the engine (the core wraps it; the GIL is taken for each call). Compiled backends
derive from ``engine._core.ModelBackend``.

Slot semantics, the same for every backend (tests/test_backend.py holds each registered backend to
them): slots start at zero; rows run in order, each independently; a row's reset flag zeroes its
slot before the row; a row with slot < 0 is padding (NaN out, no state touched); a row's output
depends only on its slot's state, its features and the weights, never on the batch; a slot's whole
state reads and writes as ``state_size`` floats, and a slot restored from ``get_state`` continues
exactly as the original would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from engine import _core

if TYPE_CHECKING:
    from engine.model.weights import ModelFile


@runtime_checkable
class ModelBackend(Protocol):
    """What the engine calls on a model backend (csrc/model_backend.hpp)."""

    @property
    def backend_name(self) -> str: ...  # "cpu", "onnxruntime", ...
    @property
    def n_features(self) -> int: ...
    @property
    def n_outputs(self) -> int: ...
    @property
    def n_slots(self) -> int: ...
    @property
    def state_size(self) -> int: ...  # floats in one slot's whole state

    def step(self, slots: np.ndarray, x: np.ndarray, reset: np.ndarray, out: np.ndarray) -> np.ndarray:
        """int32 slots[n], float32 x[n, n_features], uint8 reset[n] -> out float32[n, n_outputs], filled in place."""
        ...

    def reset_slot(self, slot: int) -> None: ...
    def reset_all(self) -> None: ...
    def grow(self, n_slots: int) -> None: ...  # at least n_slots; existing states kept
    def resize(self, n_slots: int) -> None: ...  # exactly n_slots, all zero
    def get_state(self, slot: int) -> np.ndarray: ...  # float32[state_size], a copy
    def set_state(self, slot: int, state: np.ndarray) -> None: ...


BackendFactory = Callable[["ModelFile", int], ModelBackend]


def _cpu(model: ModelFile, n_slots: int) -> ModelBackend:
    return model.core_model(n_slots)


def _onnxruntime(model: ModelFile, n_slots: int) -> ModelBackend:
    # Imported when chosen: only such runs need it (and the optional onnxruntime, whose absence it explains).
    from engine.model.onnx_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(model, n_slots)


def _tensorrt(precision: str) -> BackendFactory:
    def factory(model: ModelFile, n_slots: int) -> ModelBackend:
        # Imported when chosen: TensorRT and CuPy are an optional extra, and need a GPU.
        from engine.model.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(model, n_slots, precision=precision)

    return factory


_FACTORIES: dict[str, BackendFactory] = {
    "cpu": _cpu,
    "onnxruntime": _onnxruntime,
    # Listed everywhere: without TensorRT, CuPy or a GPU, choosing them says which is missing.
    "tensorrt": _tensorrt("fp32"),
    "tensorrt-fp16": _tensorrt("fp16"),
}


def _cuda(precision: str) -> BackendFactory:
    def factory(model: ModelFile, n_slots: int) -> ModelBackend:
        return _core.CudaSsmModel(model.config.core_dict(), model.tensors, n_slots, precision=precision)

    return factory


# Only a core built with the CUDA backend (NEXTICK_CUDA=ON, `make core-cuda`) has CudaSsmModel:
# "cuda" computes the CPU kernel's bits on the GPU, "cuda-fp16" keeps the matrices in binary16
# (csrc/cuda/ssm_cuda.hpp). On a machine without a GPU, make_backend("cuda", ...) says so.
if hasattr(_core, "CudaSsmModel"):
    _FACTORIES["cuda"] = _cuda("fp32")
    _FACTORIES["cuda-fp16"] = _cuda("fp16")


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make ``name`` a backend: ``factory(model_file, n_slots)`` returns a ModelBackend with those weights."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"backend name {name!r} must be letters, digits, '-' or '_'")
    _FACTORIES[name] = factory


def backend_names() -> list[str]:
    return list(_FACTORIES)


def make_backend(name: str, model: ModelFile, n_slots: int) -> ModelBackend:
    """The backend ``name`` running ``model`` with ``n_slots`` zeroed slots."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown model backend {name!r}; available here: {', '.join(_FACTORIES)}")
    runs_on = getattr(model, "backends", None)  # a model only some backends run (a zoo model's .onnx)
    if runs_on is not None and name not in runs_on:
        raise ValueError(model.wrong_backend(name))
    backend = factory(model, n_slots)
    if backend.n_features != model.config.n_features or backend.n_outputs != model.config.n_out:
        raise ValueError(
            f"backend {name!r} built a model with {backend.n_features} features and {backend.n_outputs} outputs; "
            f"{model.path} has {model.config.n_features} and {model.config.n_out}"
        )
    return backend
