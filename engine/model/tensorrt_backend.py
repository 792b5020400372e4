"""The ``tensorrt`` model backends: the exported step graph (engine/model/onnx_format.py) built into a
TensorRT engine and run on an NVIDIA GPU, behind the engine's seam (engine/model/backend.py).

    --backend tensorrt        fp32: the graph as exported
    --backend tensorrt-fp16   the matrix products in binary16 (``fp16_step_graph``), the rest fp32

Needs a GPU and the ``tensorrt`` extra (``pip install 'nextick[tensorrt]'``: TensorRT, CuPy for the
device-resident state pool, onnx). TensorRT 11 builds strongly typed networks only (its precision
flags are gone), so FP16 is a property of the graph: ``fp16_step_graph`` rewrites every Gemm to take
a binary16 activation and binary16 weights and cast its result back to float32. That rewrite is
plain ONNX, so it runs (and is tested) in ONNX Runtime on a CPU too; its tolerance is
FP16_RTOL against the fp32 kernel, the CUDA fp16 backend's.

Engines are built once per (graph bytes, precision, batch profile, TensorRT version, GPU) and cached
as plan files under ``onnx_format.cache_path``'s root (``.../tensorrt/<key>.plan``): ``engine_key``.
The optimization profile spans batch 1 .. max_batch with the optimum at ``opt_batch`` (the engine's
usual batch, one row per instrument).

The state pool lives on the device: one CuPy array per state of the graph, [n_slots, *shape]. A
step copies features and the reset mask through pinned host buffers, gathers the rows' states on the
device into the engine's input buffers, runs the engine (reset applied inside the graph), scatters
the new states back on the device and copies only the outputs to the host. States never cross to
the host per tick; get_state/set_state copy one slot.

Not run on this project's CI machines (no GPU): the graph rewrite, the cache key and the refusals
are tested there; tests/test_tensorrt.py runs the engine where a GPU and TensorRT are present.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from engine.model.onnx_format import (
    INPUT_RESET,
    INPUT_X,
    OUTPUT,
    StateSpec,
    cache_path,
    check_metadata,
    file_sha256,
)
from engine.model.onnx_rewrite import fp16_step_graph
from engine.model.weights import ModelFile

INSTALL_HINT = "pip install 'nextick[tensorrt]' (TensorRT and CuPy for CUDA 13; needs an NVIDIA GPU)"
PRECISIONS = ("fp32", "fp16")
FP16_RTOL = 2e-3  # as the CUDA fp16 backend (tests/test_cuda.py): binary16 matrices, fp32 elsewhere
DEFAULT_MAX_BATCH = 16_384
DEFAULT_OPT_BATCH = 1_024


def tensorrt_installed() -> bool:
    return importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("cupy") is not None


def _import_gpu() -> tuple[Any, Any]:
    try:
        import cupy
        import tensorrt
    except ImportError as e:
        raise ValueError(f"the tensorrt backend needs TensorRT and CuPy ({e.name} is not installed): {INSTALL_HINT}") from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001 - CuPy raises its own CUDARuntimeError without a driver
        raise ValueError(f"the tensorrt backend needs an NVIDIA GPU; CUDA says: {e}") from None
    if n == 0:
        raise ValueError("the tensorrt backend needs an NVIDIA GPU; this machine has none (use --backend cpu)")
    return tensorrt, cupy


# ------------------------------------------------------------------------------------ the graph


def step_graph_bytes(onnx_path: str | os.PathLike, precision: str) -> bytes:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    data = Path(onnx_path).read_bytes()
    return fp16_step_graph(data) if precision == "fp16" else data


def engine_key(graph: bytes, precision: str, max_batch: int, opt_batch: int, trt_version: str, device: str) -> str:
    """Name of a cached plan: a plan is valid only for the same graph, precision, profile, TensorRT
    version and GPU model, so all of them are in the key."""
    h = hashlib.sha256(graph)
    h.update(f"|{precision}|{max_batch}|{opt_batch}|{trt_version}|{device}".encode())
    return h.hexdigest()


def engine_path(key: str) -> Path:
    return cache_path("x").parent.parent / "tensorrt" / f"{key}.plan"


def build_engine(trt: Any, graph: bytes, specs: list[StateSpec], n_features: int, max_batch: int, opt_batch: int) -> bytes:
    """A serialized engine of the step graph with one optimization profile over the batch axis."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(graph):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT could not parse the step graph: {errors}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    opt = min(opt_batch, max_batch)
    shapes = {INPUT_X: (n_features,), INPUT_RESET: ()} | {s.name: s.shape for s in specs}
    for name, tail in shapes.items():
        profile.set_shape(name, (1, *tail), (opt, *tail), (max_batch, *tail))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ValueError("TensorRT failed to build an engine for the step graph (see its log above)")
    return bytes(plan)


# ---------------------------------------------------------------------------------- the backend


class TensorRTBackend:
    """A ModelBackend running ``model``'s step graph as a TensorRT engine with a device-resident
    state pool. ``precision``: "fp32" or "fp16"; ``max_batch``: the largest step the engine takes
    (a larger one is cut into pieces); ``onnx_path``: the graph (default: as the onnxruntime backend
    finds it)."""

    def __init__(self, model: ModelFile, n_slots: int, *, precision: str = "fp32", onnx_path: str | os.PathLike | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, opt_batch: int = DEFAULT_OPT_BATCH) -> None:
        from engine.model.onnx_backend import onnx_path_for

        trt, cp = _import_gpu()
        self._trt, self._cp = trt, cp
        self.backend_name = "tensorrt" if precision == "fp32" else f"tensorrt-{precision}"
        self.config = model.config
        sha = file_sha256(model.path)
        self.onnx_path = Path(onnx_path) if onnx_path is not None else onnx_path_for(model, sha)
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(self.onnx_path), load_external_data=False).metadata_props}
        self.specs = check_metadata(str(self.onnx_path), meta, model.config, model.path, sha)
        graph = step_graph_bytes(self.onnx_path, precision)
        device = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"].decode()
        self.plan_path = engine_path(engine_key(graph, precision, max_batch, opt_batch, trt.__version__, device))
        if self.plan_path.is_file():
            plan = self.plan_path.read_bytes()
        else:
            plan = build_engine(trt, graph, self.specs, self.config.n_features, max_batch, opt_batch)
            self.plan_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.plan_path.with_suffix(".tmp")
            tmp.write_bytes(plan)
            tmp.replace(self.plan_path)
        self._engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
        self._context = self._engine.create_execution_context()
        self._stream = cp.cuda.Stream(non_blocking=True)
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._state_size = sum(s.size for s in self.specs)
        self._pool: list[Any] = []
        self._alloc(n_slots, keep=False)
        self._cap = 0
        self._bound = -1
        # Stream-ordered time of the host<->device copies and of the rest of each step (gather, engine,
        # scatter), summed while ``profile`` is on: the bench's host<->device share.
        self.profile = False
        self.copy_ms = self.compute_ms = 0.0

    n_features = property(lambda self: self.config.n_features)
    n_outputs = property(lambda self: self.config.n_out)
    n_slots = property(lambda self: self._n_slots)
    state_size = property(lambda self: self._state_size)

    def step(self, slots: np.ndarray, x: np.ndarray, reset: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        slots = np.asarray(slots, np.int32)
        x = np.asarray(x, np.float32)
        reset = np.asarray(reset).view(np.uint8) if np.asarray(reset).dtype == np.bool_ else np.asarray(reset, np.uint8)
        n = len(slots)
        if out is None:
            out = np.empty((n, self.n_outputs), np.float32)
        if n == 0:
            return out
        if int(slots.max()) >= self._n_slots:
            raise IndexError(f"step: slot {int(slots.max())} not in [0, {self._n_slots})")
        with self._lock:
            out[slots < 0] = np.nan
            # Pieces of distinct slots >= 0, in row order (a repeat sees the earlier row's update),
            # each at most max_batch rows.
            from engine.model.onnx_backend import _segments

            for rows in _segments(slots):
                for at in range(0, len(rows), self._max_batch):
                    part = rows[at : at + self._max_batch]
                    out[part] = self._run(slots[part], x[part], reset[part])
        return out

    def _run(self, slots: np.ndarray, x: np.ndarray, reset: np.ndarray) -> np.ndarray:
        cp = self._cp
        m = len(slots)
        self._grow(m)
        events = [cp.cuda.Event() for _ in range(4)] if self.profile else None
        with self._stream:
            if events:
                events[0].record(self._stream)
            self._h_x[:m] = x
            self._h_reset[:m] = reset
            self._h_slots[:m] = slots
            self._d_x[:m].set(self._h_x[:m], stream=self._stream)
            self._d_reset[:m].set(self._h_reset[:m], stream=self._stream)
            self._d_slots[:m].set(self._h_slots[:m], stream=self._stream)
            if events:
                events[1].record(self._stream)
            idx = self._d_slots[:m]
            for pool, s_in in zip(self._pool, self._d_in):
                cp.take(pool, idx, axis=0, out=s_in[:m])
            if m != self._bound:
                self._bind(m)
            if not self._context.execute_async_v3(self._stream.ptr):
                raise RuntimeError("TensorRT failed to run the step")
            for pool, s_out in zip(self._pool, self._d_out):
                pool[idx] = s_out[:m]
            if events:
                events[2].record(self._stream)
            self._d_y[:m].get(stream=self._stream, out=self._h_y[:m])
            if events:
                events[3].record(self._stream)
        self._stream.synchronize()
        if events:
            t = cp.cuda.get_elapsed_time
            self.copy_ms += t(events[0], events[1]) + t(events[2], events[3])
            self.compute_ms += t(events[1], events[2])
        return self._h_y[:m]

    def _bind(self, m: int) -> None:
        ctx = self._context
        ctx.set_input_shape(INPUT_X, (m, self.n_features))
        ctx.set_input_shape(INPUT_RESET, (m,))
        ctx.set_tensor_address(INPUT_X, self._d_x.data.ptr)
        ctx.set_tensor_address(INPUT_RESET, self._d_reset.data.ptr)
        ctx.set_tensor_address(OUTPUT, self._d_y.data.ptr)
        for spec, s_in, s_out in zip(self.specs, self._d_in, self._d_out):
            ctx.set_input_shape(spec.name, (m, *spec.shape))
            ctx.set_tensor_address(spec.name, s_in.data.ptr)
            ctx.set_tensor_address(spec.output, s_out.data.ptr)
        self._bound = m

    def _grow(self, n: int) -> None:
        if n <= self._cap:
            return
        cp = self._cp
        cap = min(max(n, 2 * self._cap), self._max_batch)
        pinned = cp.cuda.alloc_pinned_memory

        def host(shape, dtype):
            count = int(np.prod(shape))
            return np.frombuffer(pinned(count * np.dtype(dtype).itemsize), dtype, count).reshape(shape)

        self._h_x = host((cap, self.n_features), np.float32)
        self._h_reset = host((cap,), np.uint8)
        self._h_slots = host((cap,), np.int32)
        self._h_y = host((cap, self.n_outputs), np.float32)
        self._d_x = cp.empty((cap, self.n_features), cp.float32)
        self._d_reset = cp.empty(cap, cp.uint8)
        self._d_slots = cp.empty(cap, cp.int32)
        self._d_y = cp.empty((cap, self.n_outputs), cp.float32)
        self._d_in = [cp.empty((cap, *s.shape), cp.float32) for s in self.specs]
        self._d_out = [cp.empty((cap, *s.shape), cp.float32) for s in self.specs]
        self._cap = cap
        self._bound = -1

    def _alloc(self, n_slots: int, *, keep: bool) -> None:
        cp = self._cp
        old = self._pool
        self._pool = [cp.zeros((n_slots, *s.shape), cp.float32) for s in self.specs]
        if keep:
            for new, prev in zip(self._pool, old):
                new[: len(prev)] = prev
        self._n_slots = n_slots

    def _check_slot(self, slot: int, what: str) -> None:
        if not 0 <= slot < self._n_slots:
            raise IndexError(f"{what}: slot {slot} not in [0, {self._n_slots})")

    def reset_slot(self, slot: int) -> None:
        self._check_slot(slot, "reset_slot")
        with self._lock:
            for pool in self._pool:
                pool[slot] = 0

    def reset_all(self) -> None:
        with self._lock:
            for pool in self._pool:
                pool.fill(0)

    def grow(self, n_slots: int) -> None:
        with self._lock:
            if n_slots > self._n_slots:
                self._alloc(n_slots, keep=True)

    def resize(self, n_slots: int) -> None:
        with self._lock:
            self._alloc(n_slots, keep=False)

    def get_state(self, slot: int) -> np.ndarray:
        self._check_slot(slot, "get_state")
        with self._lock:
            return np.concatenate([self._cp.asnumpy(pool[slot]).ravel() for pool in self._pool])

    def set_state(self, slot: int, state: np.ndarray) -> None:
        self._check_slot(slot, "set_state")
        state = np.asarray(state)
        if state.dtype != np.float32 or state.shape != (self._state_size,):
            raise ValueError(f"set_state: state must be float32 of shape ({self._state_size},), got {state.dtype}{list(state.shape)}")
        with self._lock:
            at = 0
            for s, pool in zip(self.specs, self._pool):
                pool[slot] = self._cp.asarray(state[at : at + s.size].reshape(s.shape))
                at += s.size
