"""The ``onnxruntime`` model backend: the exported step graph (engine/model/onnx_format.py) run by ONNX
Runtime behind the engine's seam (engine/model/backend.py), on CPU, or on CUDA where onnxruntime-gpu
is installed. Needs the ``onnx`` extra (``pip install 'nextick[onnx]'``); never torch, unless a model
has no .onnx yet and must be exported.

Which .onnx runs a model file ``DIR/NAME.safetensors`` (``onnx_path_for``):

1. ``DIR/NAME.onnx``, the file `nextick export --format onnx --model DIR/NAME.safetensors` writes
   (the packaged model ships ``engine/model/default.onnx``);
2. else the cache, ``onnx_format.cache_path``: a file named by the model file's SHA-256;
3. else, when torch is installed, the model is exported into the cache now (seconds, once).

Whichever it is, its metadata must name the model file's SHA-256 and config, or it is refused with a
message naming the file and the command that re-exports it.

The state pool is one float32 array per state of the graph, [n_slots, *shape]. A step copies its
rows' features and gathers their states into preallocated buffers, runs the graph once through an
IOBinding that points the graph's inputs and outputs at those buffers (bound again only when the batch
size changes), and scatters the new states back: no allocation per call once the largest batch has
been seen. Rows keep the seam's semantics: padding rows (slot < 0) get NaN and touch nothing; a slot
that appears twice in a batch is stepped twice, in row order (the batch is cut before each repeat and
the pieces run one after the other, as csrc/ssm.cpp cuts its blocks). Batches with padding or repeats
take a slower path that lists their rows; the engine's batches (one row per instrument) have neither.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from engine import _core
from engine.model.onnx_format import (
    INPUT_RESET,
    INPUT_X,
    OUTPUT,
    OnnxFileError,
    StateSpec,
    cache_path,
    check_metadata,
    file_sha256,
    read_model_metadata,
    sibling_path,
)
from engine.model.onnx_model import OnnxModelFile
from engine.model.weights import ModelFile

INSTALL_HINT = "pip install 'nextick[onnx]' (CPU) or 'nextick[onnx-gpu]' (CUDA)"
PROVIDERS_ENV = "NEXTICK_ORT_PROVIDERS"


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ValueError(f"the onnxruntime backend needs ONNX Runtime, which is not installed: {INSTALL_HINT}") from None
    return onnxruntime


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def default_providers() -> list[str]:
    """``$NEXTICK_ORT_PROVIDERS`` (comma-separated) if set, else CUDA first where this onnxruntime
    has it, then the CPU."""
    ort = import_onnxruntime()
    env = os.environ.get(PROVIDERS_ENV, "").strip()
    if env:
        return [p.strip() for p in env.split(",") if p.strip()]
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def onnx_path_for(model: ModelFile, source_sha256: str) -> Path:
    """The .onnx that runs ``model`` (see the module docstring), exporting it into the cache when
    there is none and torch is installed."""
    sibling = sibling_path(model.path)
    if sibling.is_file():
        return sibling
    cached = cache_path(source_sha256)
    if cached.is_file():
        return cached
    try:
        from engine.model.onnx_export import export_onnx
    except ImportError:
        raise OnnxFileError(
            f"{model.path}: no ONNX export of this model ({sibling} or {cached}); make one where torch is "
            f"installed: nextick export --format onnx --model {model.path} --out {sibling}"
        ) from None
    return export_onnx(model, cached)


def _locked(method):
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return call


class OnnxRuntimeBackend:
    """A ModelBackend (engine/model/backend.py) running ``model``'s ONNX step graph in ONNX Runtime.

    ``model``: an SSM's ModelFile, or a zoo model's OnnxModelFile (whose .onnx is the graph). Every
    kind runs through the same code: a state is read only by its spec (name, output, shape).
    ``onnx_path``: the graph (default: ``onnx_path_for(model)``); it must be the export of ``model``.
    ``providers``: ONNX Runtime execution providers (default ``default_providers()``).
    ``threads``: ONNX Runtime's intra-op threads; 1, as the C++ kernel (the engine's loop is one thread).

    A slot's state vector (get_state/set_state) is the graph's states in order (onnx_format.state_specs):
    for the SSM the C++ kernel's, layer by layer, the conv window then the SSM state, each in the
    kernel's layout, so a state moves between backends.
    """

    backend_name = "onnxruntime"

    def __init__(self, model: ModelFile | OnnxModelFile, n_slots: int, *, onnx_path: str | os.PathLike | None = None,
                 providers: list[str] | None = None, threads: int = 1) -> None:
        ort = import_onnxruntime()
        self.config = model.config
        if isinstance(model, OnnxModelFile):  # a zoo model: its .onnx is the model file
            self.onnx_path = Path(onnx_path) if onnx_path is not None else Path(model.path)
            self._session = _open_session(ort, self.onnx_path, providers or default_providers(), threads)
            info = read_model_metadata(str(self.onnx_path), self._session.get_modelmeta().custom_metadata_map)
            if info.config != model.config:
                raise OnnxFileError(f"{self.onnx_path}: holds a model of config {info.config}, not {model.path}'s "
                                    f"{model.config}; load the model from the file you mean to run")
            self.specs = info.specs
        else:
            sha = file_sha256(model.path)
            self.onnx_path = Path(onnx_path) if onnx_path is not None else onnx_path_for(model, sha)
            self._session = _open_session(ort, self.onnx_path, providers or default_providers(), threads)
            meta = self._session.get_modelmeta().custom_metadata_map
            self.specs = check_metadata(str(self.onnx_path), meta, model.config, model.path, sha)
        _check_graph(str(self.onnx_path), self._session, self.config.n_features, self.config.n_out, self.specs)
        self._io = self._session.io_binding()
        # The pool and the bound buffers are shared by every call; ONNX Runtime lets go of the GIL
        # while it runs, so calls from two threads must not interleave (the kernel has a mutex too).
        self._lock = threading.Lock()
        self._state_size = sum(s.size for s in self.specs)
        self._pool: list[np.ndarray] = []
        self._alloc(n_slots, keep=False)
        self._cap = 0
        self._masks: np.ndarray | None = None  # MC dropout: [variants, width], see set_dropout_masks
        self._plain = (self._session, self._io)
        self._ort, self._providers, self._threads = ort, providers or default_providers(), threads
        self._grow_buffers(1)

    # ------------------------------------------------------------------ the ModelBackend protocol

    n_features = property(lambda self: self.config.n_features)
    n_outputs = property(lambda self: self.config.n_out)
    n_slots = property(lambda self: self._n_slots)
    state_size = property(lambda self: self._state_size)

    @property
    def providers(self) -> list[str]:
        """The execution providers the session runs on, first choice first."""
        return self._session.get_providers()

    @_locked
    def step(self, slots: np.ndarray, x: np.ndarray, reset: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """int32 slots[n] (-1: padding), float32 x[n, n_features], uint8/bool reset[n] -> out float32[n, n_outputs]."""
        slots, x, reset, out = self._checked(slots, x, reset, out)
        n = len(slots)
        if n == 0:
            return out
        top = int(slots.max())
        if top >= self._n_slots:  # before any state or output is written, as the kernel
            raise IndexError(f"step: slot {top} not in [0, {self._n_slots})")
        self._grow_buffers(n)
        if int(slots.min()) >= 0 and not self._has_repeat(slots):
            np.copyto(out, self._run(slots, x, reset))  # the engine's case: one row per instrument
            return out
        out[slots < 0] = np.nan
        for rows in _segments(slots):
            out[rows] = self._run(slots[rows], x[rows], reset[rows])
        return out

    @_locked
    def reset_slot(self, slot: int) -> None:
        self._check_slot(slot, "reset_slot")
        for pool in self._pool:
            pool[slot] = 0

    @_locked
    def reset_all(self) -> None:
        for pool in self._pool:
            pool.fill(0)

    @_locked
    def grow(self, n_slots: int) -> None:
        if n_slots > self._n_slots:
            self._alloc(n_slots, keep=True)

    @_locked
    def resize(self, n_slots: int) -> None:
        self._alloc(n_slots, keep=False)

    @_locked
    def get_state(self, slot: int) -> np.ndarray:
        self._check_slot(slot, "get_state")
        return np.concatenate([pool[slot].ravel() for pool in self._pool])

    @_locked
    def set_state(self, slot: int, state: np.ndarray) -> None:
        self._check_slot(slot, "set_state")
        state = np.asarray(state)
        if state.dtype != np.float32:
            raise TypeError(f"set_state: state must be float32, got dtype {state.dtype}")
        if state.shape != (self._state_size,):
            raise ValueError(f"set_state: state must have shape ({self._state_size},), got {state.shape}")
        at = 0
        for s, pool in zip(self.specs, self._pool):
            pool[slot] = state[at : at + s.size].reshape(s.shape)
            at += s.size

    # -------------------------------------------------------------------------------- internals

    def _alloc(self, n_slots: int, *, keep: bool) -> None:
        if n_slots < 0:
            raise ValueError(f"n_slots must be >= 0, got {n_slots}")
        need = 4.0 * self._state_size * n_slots
        if need > _core.SSM_MAX_STATE_BYTES:
            raise ValueError(
                f"{self.onnx_path}: {n_slots:,} slots need {need:,.0f} bytes of state, over the "
                f"{_core.SSM_MAX_STATE_BYTES:,} the engine allows (csrc/ssm.hpp kMaxStateBytes)"
            )
        old = self._pool
        self._pool = [np.zeros((n_slots, *s.shape), np.float32) for s in self.specs]
        if keep:
            for new, prev in zip(self._pool, old):
                new[: len(prev)] = prev
        self._n_slots = n_slots
        self._last_row = np.zeros(n_slots, np.int64)  # _has_repeat's scratch: a row index per slot

    @_locked
    def set_dropout_masks(self, masks: np.ndarray) -> None:
        """MC dropout for a zoo model: masks float32[variants, width] scale the prediction head's
        input (engine/model/dropout.py head_dropout_masks); slot s runs variant s % variants. The
        graph gets a ``drop_mask`` input (engine/model/onnx_rewrite.py); 0 variants restores it."""
        masks = np.ascontiguousarray(masks, np.float32)
        if masks.ndim != 2:
            raise ValueError(f"set_dropout_masks: masks must be float32[variants, width], got shape {masks.shape}")
        if len(masks) == 0:
            self._session, self._io = self._plain
            self._masks = None
        else:
            from engine.model.onnx_rewrite import head_mask_graph

            graph, width = head_mask_graph(self.onnx_path.read_bytes())
            if masks.shape[1] != width:
                raise ValueError(f"set_dropout_masks: {self.onnx_path}'s head takes {width} inputs, the masks have "
                                 f"{masks.shape[1]}")
            if not np.isfinite(masks).all() or (masks < 0).any():
                raise ValueError("set_dropout_masks: masks must be finite and >= 0")
            if self._masks is None:
                self._session = _open_session(self._ort, graph, self._providers, self._threads)
                self._io = self._session.io_binding()
            self._masks = masks
        self._mask_rows = np.empty((self._cap, masks.shape[1] if len(masks) else 0), np.float32)
        self._bound_rows = -1

    @property
    def dropout_variants(self) -> int:
        return 0 if self._masks is None else len(self._masks)

    def _grow_buffers(self, n: int) -> None:
        """Gather/result buffers for batches up to ``n`` rows (at least doubling: few reallocations)."""
        if n <= self._cap:
            return
        cap = max(n, 2 * self._cap)
        self._x = np.empty((cap, self.n_features), np.float32)
        self._reset = np.empty(cap, np.uint8)
        self._out_rows = np.empty((cap, self.n_outputs), np.float32)
        self._states_in = [np.empty((cap, *s.shape), np.float32) for s in self.specs]
        self._states_out = [np.empty((cap, *s.shape), np.float32) for s in self.specs]
        self._rows = np.arange(cap, dtype=np.int64)
        self._seen = np.empty(cap, np.int64)
        self._differ = np.empty(cap, bool)
        self._mask_rows = np.empty((cap, 0 if self._masks is None else self._masks.shape[1]), np.float32)
        self._cap = cap
        self._bound_rows = -1

    def _bind_rows(self, m: int) -> None:
        """Bind the first ``m`` rows of every buffer to the graph's inputs and outputs. The graph
        reads and writes only these buffers, so a binding holds for every run of ``m`` rows: binding
        costs more in Python than the copies into the buffers do."""
        io = self._io
        _bind_buffer(io, INPUT_X, self._x[:m], input=True)
        _bind_buffer(io, INPUT_RESET, self._reset[:m], input=True)
        _bind_buffer(io, OUTPUT, self._out_rows[:m], input=False)
        for spec, s_in, s_out in zip(self.specs, self._states_in, self._states_out):
            _bind_buffer(io, spec.name, s_in[:m], input=True)
            _bind_buffer(io, spec.output, s_out[:m], input=False)
        if self._masks is not None:
            from engine.model.onnx_rewrite import INPUT_DROP_MASK

            _bind_buffer(io, INPUT_DROP_MASK, self._mask_rows[:m], input=True)
        self._bound_rows = m

    def _has_repeat(self, slots: np.ndarray) -> bool:
        """Whether a slot appears twice among ``slots`` (all >= 0): each slot records a row that
        holds it; a row whose slot recorded another row shares its slot. No allocation."""
        n = len(slots)
        rows = self._rows[:n]
        self._last_row[slots] = rows
        np.take(self._last_row, slots, out=self._seen[:n], mode="clip")
        np.not_equal(self._seen[:n], rows, out=self._differ[:n])
        return bool(self._differ[:n].any())

    def _run(self, slots: np.ndarray, x: np.ndarray, reset: np.ndarray) -> np.ndarray:
        """One run of the graph for rows with distinct slots >= 0; returns their outputs (a view of
        a buffer, valid until the next run)."""
        m = len(slots)
        if m != self._bound_rows:
            self._bind_rows(m)
        np.copyto(self._x[:m], x)
        np.copyto(self._reset[:m], reset.view(np.uint8))
        for pool, s_in in zip(self._pool, self._states_in):
            np.take(pool, slots, axis=0, out=s_in[:m], mode="clip")  # slots are checked: no bounds buffer
        if self._masks is not None:
            np.take(self._masks, slots % len(self._masks), axis=0, out=self._mask_rows[:m])
        self._session.run_with_iobinding(self._io)
        for pool, s_out in zip(self._pool, self._states_out):
            pool[slots] = s_out[:m]
        return self._out_rows[:m]

    def _checked(self, slots, x, reset, out) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The step's arrays as the core checks them (csrc/bind_backend.cpp): right dtypes and shapes,
        no silent conversion."""
        slots, x, reset = np.asarray(slots), np.asarray(x), np.asarray(reset)
        if slots.dtype != np.int32 or slots.ndim != 1:
            raise TypeError(f"step: slots must be int32[n], got {slots.dtype}{list(slots.shape)}")
        n = len(slots)
        if x.dtype != np.float32:
            raise TypeError(f"step: x must be float32, got dtype {x.dtype}")
        if x.shape != (n, self.n_features):
            raise ValueError(f"step: x must have shape ({n}, {self.n_features}), got {x.shape}")
        if reset.dtype not in (np.uint8, np.bool_) or reset.shape != (n,):
            raise TypeError(f"step: reset must be uint8 or bool of shape ({n},), got {reset.dtype}{list(reset.shape)}")
        if out is None:
            out = np.empty((n, self.n_outputs), np.float32)
        elif out.dtype != np.float32 or out.shape != (n, self.n_outputs) or not out.flags.writeable:
            raise ValueError(f"step: out must be writeable float32 of shape ({n}, {self.n_outputs}), "
                             f"got {out.dtype}{list(out.shape)}")
        return slots, x, reset, out

    def _check_slot(self, slot: int, what: str) -> None:
        if not 0 <= slot < self._n_slots:
            raise IndexError(f"{what}: slot {slot} not in [0, {self._n_slots})")


def parity_vs_kernel(model: ModelFile, onnx_path: str | os.PathLike, *, steps: int = 64, batch: int = 8,
                     seed: int = 0) -> float:
    """The largest relative error (max |a - b| / max |b|, per output and per state) of the ONNX file
    against the C++ kernel over ``steps`` steps of ``batch`` slots with random features and resets."""
    ort_backend = OnnxRuntimeBackend(model, batch, onnx_path=onnx_path)
    return parity_vs(ort_backend, model.core_model(batch), ort_backend.specs, steps=steps, seed=seed)


def parity_vs(backend, kernel, specs: list[StateSpec], *, steps: int = 64, seed: int = 0) -> float:
    """The largest relative error of ``backend`` against ``kernel`` (both with the same slots, all
    stepped every time) over ``steps`` random steps with 5% resets: outputs, then every state of every
    layer on its own scale (``specs``: the layout of a slot's state vector)."""
    rng = np.random.default_rng(seed)
    batch = kernel.n_slots
    slots = np.arange(batch, dtype=np.int32)
    worst = 0.0
    for t in range(steps):
        x = rng.standard_normal((batch, kernel.n_features)).astype(np.float32)
        reset = (rng.random(batch) < 0.05).astype(np.uint8)
        worst = max(worst, relative_error(backend.step(slots, x, reset), kernel.step(slots, x, reset)))
    states = [np.stack([b.get_state(slot) for slot in range(batch)]) for b in (backend, kernel)]
    bounds = np.cumsum([s.size for s in specs])[:-1]  # each state of each layer on its own scale
    for a, b in zip(*(np.split(s, bounds, axis=1) for s in states)):
        worst = max(worst, relative_error(a, b))
    return worst


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b| (the parity suite's measure: the error relative to the tensor's scale)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _segments(slots: np.ndarray) -> Iterator[np.ndarray]:
    """Row indices of the runs the batch is cut into: padding rows left out, and a run ends before
    the row that would repeat one of its slots, so that row sees the earlier row's update."""
    run: list[int] = []
    seen: set[int] = set()
    for row, slot in enumerate(slots.tolist()):
        if slot < 0:
            continue
        if slot in seen:
            yield np.array(run, np.int64)
            run, seen = [], set()
        run.append(row)
        seen.add(slot)
    if run:
        yield np.array(run, np.int64)


def _bind_buffer(io: Any, name: str, a: np.ndarray, *, input: bool) -> None:
    """Bind a C-contiguous array's memory (no copy on the CPU) to the graph's input or output ``name``."""
    kind = io.bind_input if input else io.bind_output
    kind(name, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)


def _open_session(ort: Any, path: Path | bytes, providers: list[str], threads: int):
    """A session of the graph in the file ``path`` (or of the serialized graph ``path``)."""
    if isinstance(path, Path) and not path.is_file():
        raise OnnxFileError(f"{path}: no such ONNX file")
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:  # ONNX Runtime would fall back to the CPU without a word
        raise ValueError(f"ONNX Runtime {ort.__version__} here has no {', '.join(missing)} (it has {', '.join(available)}); "
                         f"check {PROVIDERS_ENV} or install 'nextick[onnx-gpu]' for CUDA")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: the provider fallbacks' warnings are not the user's concern
    try:
        return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options, providers=providers)
    except Exception as e:  # ONNX Runtime raises its own exception types for unreadable models
        raise OnnxFileError(f"{path}: ONNX Runtime cannot load it ({type(e).__name__}: {e}); re-export it with "
                            "`nextick export --format onnx`") from None


def _check_graph(path: str, session: Any, n_features: int, n_out: int, specs: list[StateSpec]) -> None:
    """The graph's inputs and outputs are the contract's (onnx_format): names, per-row shapes, types."""
    want_in = [(INPUT_X, (n_features,), "tensor(float)"), (INPUT_RESET, (), "tensor(uint8)")]
    want_in += [(s.name, s.shape, "tensor(float)") for s in specs]
    want_out = [(OUTPUT, (n_out,), "tensor(float)")] + [(s.output, s.shape, "tensor(float)") for s in specs]
    for what, got, want in (("inputs", session.get_inputs(), want_in), ("outputs", session.get_outputs(), want_out)):
        have = [(a.name, tuple(a.shape[1:]), a.type) for a in got]
        if have != want:
            raise OnnxFileError(f"{path}: graph {what} are {have}, expected {want}; re-export it with "
                                "`nextick export --format onnx`")

