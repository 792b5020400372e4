"""Type stub of engine._core, the compiled core (csrc/, built by CMake through scikit-build-core).

Kept by hand next to the bindings; tests/test_core_stub.py checks that it names exactly what the
module exports, class by class, with the same parameter names. Structured arrays ("Records") use the
dtypes engine.domain.quote.QUOTE_DTYPE (quotes), strategies.base.BATCH_DTYPE (tick batches),
strategies.portfolio.BOOK_DTYPE (the book) and the core's own record layouts (fills, trades, resets,
order events, tap rows; see csrc/execution.hpp and csrc/backtester.hpp).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

Records = np.ndarray  # a structured array (see above)

__all__: list[str] = ['BATCH_ITEMSIZE', 'BOOK_ITEMSIZE', 'Backtester', 'Conflator', 'CudaSsmModel', 'ModelBackend', 'N_FEATURES', 'ORDER_EVENT_KINDS', 'QUOTE_ITEMSIZE', 'RESET_REASONS', 'SSM_MAX_STATE_BYTES', 'SSM_MAX_WEIGHT_BYTES', 'STRATEGY_PARAMS', 'SsmModel', 'as_backend', 'build_info']
class ModelBackend:
    """
    A signal model behind the engine's seam (csrc/model_backend.hpp): a pool of per-instrument state slots stepped in batches with a reset mask. Compiled backends derive from it; any Python object with the same attributes can be handed to the engine instead (engine.model.backend).
    """
    def get_state(self, slot: int) -> NDArray[np.float32]:
        """
        A copy of one slot's whole state, float32[state_size].
        """
    def grow(self, n_slots: int) -> None:
        """
        At least n_slots slots; existing slots keep their states, new ones start at zero.
        """
    def reset_all(self) -> None:
        """
        Zero every slot's state.
        """
    def reset_slot(self, slot: int) -> None:
        """
        Zero one slot's state.
        """
    def resize(self, n_slots: int) -> None:
        """
        Exactly n_slots slots, all zero.
        """
    def set_state(self, slot: int, state: Any) -> None:
        """
        Overwrite one slot's whole state (float32[state_size]).
        """
    def step(self, slots: Any, x: Any, reset: Any, out: Any = None) -> np.ndarray:
        """
        One step per row: slots int32[n] (-1 = padding row, NaN out, no state touched), x float32[n, n_features], reset uint8/bool[n] (zero the slot first), out float32[n, n_outputs] or None. Returns out. Arrays are used in place, never converted.
        """
    @property
    def backend_name(self) -> str:
        """
        "cpu", "onnxruntime", ...
        """
    @property
    def n_features(self) -> int:
        ...
    @property
    def n_outputs(self) -> int:
        ...
    @property
    def n_slots(self) -> int:
        ...
    @property
    def state_size(self) -> int:
        """
        Floats in one slot's whole state.
        """
class SsmModel(ModelBackend):
    """
    Streaming SSM inference (mamba2 or s4d) on this CPU over a pool of per-slot states, the first ModelBackend; see csrc/ssm.hpp. Views of its state pool: conv_state, ssm_state.
    """
    @staticmethod
    def footprint(config: dict) -> dict:
        """
        Bytes the kernel allocates for a config: weight_bytes (the weight arena) and state_bytes_per_slot (one instrument's states). ValueError, with both sizes, for a config past SSM_MAX_WEIGHT_BYTES or SSM_MAX_STATE_BYTES.
        """
    @staticmethod
    def kernels() -> list[str]:
        """
        The kernel variants compiled into this build that this CPU runs, best first.
        """
    @staticmethod
    def tensor_shapes(config: dict) -> dict:
        """
        Every tensor name the config needs, with its shape.
        """
    def __init__(self, config: dict, tensors: dict, n_slots: int) -> None:
        """
        config: dict with SsmConfig's keys (absent keys take the defaults; kind is "mamba2" or "s4d"); tensors: name -> float32 C-contiguous ndarray (copied); n_slots: state pool size.
        """
    def __repr__(self) -> str:
        ...
    def conv_state(self, layer: int) -> np.ndarray:
        """
        mamba2 conv window of a layer, float32[n_slots, d_conv-1, conv_dim] (index 0 = oldest), a writable view of the pool (no copy). ValueError for s4d.
        """
    def set_kernel(self, name: str) -> None:
        """
        Run another kernel variant (one of SsmModel.kernels(), or 'auto'); the results are the same bits.
        """
    def set_dropout_masks(self, masks: np.ndarray) -> None:
        """
        MC dropout: masks float32[n_variants, n_layers, d_model] scale each layer's residual branch; slot s runs variant s % n_variants. An array of 0 variants clears them.
        """
    def ssm_state(self, layer: int) -> np.ndarray:
        """
        SSM state of a layer, float32[n_slots, nheads, headdim, d_state] (mamba2) or [n_slots, d_inner, d_state] (s4d), a writable view of the pool (no copy). Not C-contiguous: the pool stores d_state outside headdim, the strides present the spec's order.
        """
    @property
    def config(self) -> dict:
        ...
    @property
    def dropout_variants(self) -> int:
        """
        How many MC-dropout variants the slots cycle through (0: none).
        """
    @property
    def kernel(self) -> str:
        """
        The compiled kernel variant step() runs (avx512, avx2, sse2, neon or generic).
        """
class CudaSsmModel(ModelBackend):
    """
    The SSM step on an NVIDIA GPU (csrc/cuda): the same config, tensors and slot semantics as SsmModel, states resident on the device, one CUDA graph replay per step and batch bucket. fp32 computes the CPU kernel's bits; fp16 keeps the matrices in binary16 and everything else in fp32.

    Only in a core built with NEXTICK_CUDA=ON (`make core-cuda`); build_info() then says cuda=<version>.
    """
    @staticmethod
    def device_count() -> int:
        """
        CUDA devices this process can use; 0 without a driver or a device.
        """
    def __init__(self, config: dict, tensors: dict, n_slots: int, precision: str = 'fp32', device: int = 0, rows_per_block: int = 8) -> None:
        """
        As SsmModel(config, tensors, n_slots); precision "fp32" or "fp16"; device: the CUDA device index; rows_per_block: rows a kernel block takes (1..32, lowered to what shared memory holds). RuntimeError where no CUDA device can be used.
        """
    def __repr__(self) -> str:
        ...
    @property
    def config(self) -> dict:
        ...
    @property
    def device(self) -> int:
        ...
    @property
    def device_name(self) -> str:
        ...
    @property
    def graphs(self) -> int:
        """
        Batch buckets whose CUDA graph is captured (since the pool was last reallocated).
        """
    @property
    def last_waves(self) -> int:
        """
        Graph replays the last step made (more than 1 only when a batch repeats a slot).
        """
    @property
    def precision(self) -> str:
        ...
    @property
    def rows_per_block(self) -> int:
        ...
class PredictionTape:
    """
    Every call a RecordingBackend saw in one run: rows per call, their slots and the model's outputs (csrc/tape_backend.hpp). Pickles as its arrays.
    """
    def __init__(self, n_features: int, counts: np.ndarray, slots: np.ndarray, out: np.ndarray) -> None:
        ...
    @property
    def n_features(self) -> int:
        ...
    @property
    def n_outputs(self) -> int:
        ...
    @property
    def n_calls(self) -> int:
        ...
    @property
    def counts(self) -> np.ndarray:
        ...
    @property
    def slots(self) -> np.ndarray:
        ...
    @property
    def out(self) -> np.ndarray:
        ...
class RecordingBackend(ModelBackend):
    """
    Wraps a backend for one run and records every step call (slots and outputs) into a PredictionTape.
    """
    def __init__(self, inner: Any) -> None:
        ...
    def tape(self) -> PredictionTape:
        """
        The tape of the run so far (a fresh run, i.e. resize, starts a new one).
        """
class ReplayBackend(ModelBackend):
    """
    Hands a PredictionTape's outputs back call by call; RuntimeError on the first call that differs from the recording. variants: rows per instrument in the recording (MC dropout); variant: the one to replay (the run steps one row per instrument), or -1 for every row as recorded.
    """
    def __init__(self, tape: PredictionTape, variants: int = 1, variant: int = -1) -> None:
        ...
    @property
    def calls_replayed(self) -> int:
        ...
    @property
    def calls_recorded(self) -> int:
        ...
class Conflator:
    """
    One snapshot per instrument per interval; see csrc/conflator.hpp.
    """
    def __init__(self, interval_ns: int) -> None:
        ...
    def flush(self) -> Records:
        """
        Everything still pending (end of stream).
        """
    def flush_until(self, now_ns: int) -> Records:
        """
        Snapshots of intervals ending at or before now_ns.
        """
    def push(self, quotes: Records) -> Records:
        """
        Feed quotes; returns the snapshots of intervals now complete.
        """
    @property
    def interval_ns(self) -> int:
        ...
    @property
    def quotes_in(self) -> int:
        ...
    @property
    def snapshots_out(self) -> int:
        ...
class Backtester:
    """
    The tick loop and fill simulator; see csrc/backtester.hpp.
    """
    def __init__(self, *, latency_ns: int = 0, fee_bps: float = 0.0, fee_per_fill: float = 0.0, size_cap: bool = False, cancel_remainder: bool = False, flatten_at_close: bool = False, flatten_lead_ns: int = 60000000000, initial_capital: float = 1000000.0, bar_ns: int = 60000000000, maker_fee_bps: float = float("nan"), queue: str = "through") -> None:
        ...
    def add_instrument(self, *, lot_size: float, gap_ns: int, warmup_ticks: int) -> int:
        ...
    def add_sessions(self, instrument: int, opens_ns: ArrayLike, closes_ns: ArrayLike) -> None:
        ...
    def compiled_state(self) -> NDArray[np.float64]:
        """
        A copy of the compiled strategy's state, [n_instruments, n_state].
        """
    def counters(self) -> dict:
        ...
    def equity_curve(self) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
        """
        (ts_ns, equity, gross_exposure) sampled at bar ends, first and last tick.
        """
    def fills(self) -> Records:
        ...
    def fills_since(self, start: int) -> Records:
        """
        fills()[start:] without copying the earlier ones (the live path reads only what is new).
        """
    def finish(self) -> None:
        ...
    def marks(self) -> NDArray[np.float64]:
        """
        Each instrument's mark (the mid its position is valued at; 0 before its first two-sided tick).
        """
    def outside_session_by_instrument(self) -> NDArray[np.uint64]:
        ...
    def positions(self) -> NDArray[np.float64]:
        ...
    def request_reset(self, instrument: int, at_ns: int = -9223372036854775808) -> None:
        """
        MANUAL reset, applied at the instrument's first in-session tick at or after at_ns.
        """
    def resets(self) -> Records:
        ...
    def resets_since(self, start: int) -> Records:
        ...
    def restore_fills(self, fills: Records) -> None:
        """
        Re-book journaled fills (in order) after a restart.
        """
    def resume_session(self, instrument: int, at_ns: int) -> None:
        """
        After a restart: the session open at at_ns counts as already open (no SESSION_OPEN reset).
        """
    def run(self, quotes: Records) -> None:
        """
        Run quotes through the built-in strategy.
        """
    def run_batched(self, quotes: Records, buffer: Records, on_batch: Callable[[int], None]) -> None:
        """
        Run quotes through a Python strategy called once per tick batch.
        """
    def run_portfolio(self, quotes: Records, buffer: Records, book: Records, targets: NDArray[np.float64], on_rebalance: Callable[[int, int, float, float], int]) -> None:
        """
        Run quotes through a portfolio strategy: on_rebalance(n_rows, ts_ns, cash, equity) reads the book and the batch, writes targets (one per instrument) and returns 0 (none), 1 (units) or 2 (weights).
        """
    def set_compiled_strategy(self, on_tick: int | Callable[..., float], on_event: int | Callable[..., None] | None, params: ArrayLike, state_init: ArrayLike, orders_cap: int = 16, user: NDArray[Any] | None = None) -> None:
        """
        A compiled strategy decides per tick in run(): on_tick and on_event are C function addresses (ints, csrc/orders.hpp CompiledTickFn / CompiledEventFn, e.g. numba cfunc .address) or Python functions called with the same arguments as numpy views (the uncompiled path); on_event may be None. user: a numpy array whose data pointer the addresses get as their `user` argument (kept alive with the core).
        """
    def set_order_latency(self, quantiles_ns: ArrayLike, seed: int) -> None:
        """
        Each order, cancel or replace waits a delay drawn from this sorted quantile table (ns) instead of latency_ns: the k-th of instrument i waits table[draw(seed, i, k)] (engine/domain/latency_model.py).
        """
    def set_host_buffers(self, requests: Records, events: Records, on_events: Callable[[int], None]) -> None:
        """
        A Python strategy's order requests (read after each batch's targets, then cleared) and its event buffer: before a batch, pending events are copied in and on_events(n) is called.
        """
    def set_model(self, model: Any, *, mean: ArrayLike, std: ArrayLike, target_mean: float, target_std: float, variants: int = 1) -> None:
        """
        Step this model backend (an engine._core.ModelBackend such as SsmModel, or any object with its methods: engine.model.backend) per in-session tick, slot = instrument, and hand predictions to strategies. variants > 1: MC dropout, each instrument steps as that many rows (slot = instrument * variants + v; the backend's masks give slot s variant s % variants); strategies get the mean predicted mid and its sample std across variants.
        """
    def set_next_order_id(self, order_id: int) -> None:
        ...
    def set_order_log(self, on: bool) -> None:
        """
        Record order events (placed, cancelled) until take_order_log().
        """
    def set_python_strategy(self) -> None:
        """
        Decisions come from run_batched's callback; run() is refused.
        """
    def set_rebalance_ns(self, period_ns: int) -> None:
        """
        Portfolio strategies: 0 = decide at every tick batch, else at the first batch at or after each multiple of period_ns since the UTC epoch.
        """
    def set_stamping(self, on: bool) -> None:
        """
        Stamp the stages of each run call's last batch with the monotonic clock (stamps()).
        """
    def set_strategy(self, kind: str, params: dict) -> None:
        """
        Configure a built-in strategy: params maps names of STRATEGY_PARAMS to values; the rest keep their defaults.
        """
    def set_tap(self, on: bool) -> None:
        """
        Record every in-session tick's features and prediction (training sets, parity tests).
        """
    def stamps(self) -> tuple[int, int, int, int, int]:
        """
        (state_ns, signal_ns, decision_ns, order_ns, batches): time.monotonic_ns() clock.
        """
    def strategy_params(self) -> dict:
        """
        The strategy as the core is configured: kind and every parameter.
        """
    def take_order_log(self) -> Records:
        ...
    def take_tap(self) -> Records:
        """
        The rows recorded since the last call (engine.training.dataset reads them).
        """
    def trades(self) -> Records:
        ...
    @property
    def cash(self) -> float:
        ...
    @property
    def equity(self) -> float:
        ...
    @property
    def n_fills(self) -> int:
        ...
    @property
    def n_instruments(self) -> int:
        ...
    @property
    def n_resets(self) -> int:
        ...
    @property
    def next_order_id(self) -> int:
        ...
def as_backend(model: Any) -> ModelBackend:
    """
    The ModelBackend the engine steps for `model`: itself when compiled, else an adapter that calls its Python methods (TypeError naming the first missing one).
    """
def build_info() -> str:
    """
    Compiler, version and vector extensions the core was built with.
    """
BATCH_ITEMSIZE: int = 80
BOOK_ITEMSIZE: int = 72
N_FEATURES: int = 5
ORDER_EVENT_KINDS: tuple[str, ...] = ('new', 'replaced', 'session_close', 'reset', 'remainder', 'end')
QUOTE_ITEMSIZE: int = 64
RESET_REASONS: tuple[str, ...] = ('SESSION_OPEN', 'GAP', 'RECONNECT', 'STALE', 'MANUAL')
SSM_MAX_STATE_BYTES: int = 4294967296
SSM_MAX_WEIGHT_BYTES: int = 1073741824
STRATEGY_PARAMS: tuple[tuple[str, float, str], ...]  # (name, default, doc) of every built-in strategy parameter
