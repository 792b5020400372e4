"""Python strategies at compiled speed: two plain functions, compiled with numba and called from the
C++ tick loop through C function pointers, with no Python object per tick.

    def on_tick(tick, params, state, orders):           # -> target units (NaN: keep)
        s = state[tick.instrument]                      # this instrument's row of the strategy's state
        ...
    def on_event(event, params, state, orders): ...     # optional: fills, rejects, cancels, resets, sessions

    strategy = CompiledStrategy(on_tick, on_event, params=np.array([...]), state_init=np.array([...]))
    run_backtest(source, config, strategy=strategy)

``tick`` is one ``strategies.base.BATCH_DTYPE`` record (``tick.mid``, ``tick.reset``, ``tick.warm``,
``tick.position``, ...), ``params`` the strategy's read-only float64 parameters, ``state`` its float64
``[n_instruments, len(state_init)]`` array (a new instrument's row starts as ``state_init``),
``orders`` a ``strategies.orders.REQUEST_DTYPE`` buffer for explicit orders (write with the functions
of ``strategies.orders``). ``event`` is one ``strategies.orders.EVENT_DTYPE`` record.

Parameters that depend on the run (a notional split over the instruments, say) are finalized when the
strategy is bound to an engine: override ``prepare(instruments, initial_capital=...)`` to return the
parameters the core gets (strategies/ema_cross_compiled.py does).

With numba installed (``pip install -e '.[compiled]'``) the functions are compiled (``numba.njit``)
and wrapped in ``numba.cfunc``s of the C signature in csrc/orders.hpp; without it, or with
``compile=False``, the core calls the same Python functions per tick: slow, and the same results bit
for bit, since the engine runs the same loop and the functions do the same float operations.

Errors: an exception in the uncompiled functions propagates out of the run as itself; an on_tick
returning something that is not a number is a TypeError naming it. Compiled code cannot raise
through the C++ loop: the cfunc catches the exception, records the first tick it happened at and
keeps the target, and the engine raises ``CompiledStrategyError`` once the core's run returns (run
with ``compile=False`` for the Python traceback). A function numba cannot type fails at ``bind``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from engine.domain.instrument import InstrumentTable
from strategies.base import BATCH_DTYPE
from strategies.orders import EVENT_DTYPE, REQUEST_DTYPE

ORDERS_CAPACITY = 16  # requests one call may write
_NJIT_OPTIONS = {"inline": "always", "error_model": "numpy"}  # see _compile (the cfuncs take the same error model)


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


# A compiled function's failure record (int64s at the cfuncs' `user` pointer): numba cannot carry an
# exception out of compiled code, so the cfunc catches it, writes where and returns NaN (keep the
# target), and CompiledStrategy.check raises in Python after the core's run.
FAIL_COUNT, FAIL_TS, FAIL_INSTRUMENT, FAIL_CALLBACK, FAIL_FIELDS = 0, 1, 2, 3, 4
_CALLBACKS = {1: "on_tick", 2: "on_event"}


class CompiledStrategyError(RuntimeError):
    """A compiled on_tick / on_event raised (numba does not say what: run with compile=False)."""


@functools.cache
def _signatures():
    from numba import from_dtype, types

    req = types.CPointer(from_dtype(REQUEST_DTYPE))
    f64p = types.CPointer(types.float64)
    i64 = types.int64
    user = types.CPointer(i64)  # the C ABI's void* user: the failure record
    tick_sig = types.float64(user, types.CPointer(from_dtype(BATCH_DTYPE)), f64p, i64, f64p, i64, i64, req, i64)
    event_sig = types.void(user, types.CPointer(from_dtype(EVENT_DTYPE)), f64p, i64, f64p, i64, i64, req, i64)
    return tick_sig, event_sig


@functools.cache
def _compile(on_tick: Callable, on_event: Callable | None) -> tuple[Any, Any]:
    """numba cfuncs of the C signatures around njit-compiled on_tick / on_event; once per pair of
    functions in a process (every strategy object built on them shares the machine code)."""
    from numba import carray, cfunc, njit

    tick_sig, event_sig = _signatures()

    @njit(error_model="numpy")
    def failed(user, ts, instrument, callback):  # pragma: no cover - compiled
        rec = carray(user, FAIL_FIELDS)
        if rec[FAIL_COUNT] == 0:
            rec[FAIL_TS] = ts
            rec[FAIL_INSTRUMENT] = instrument
            rec[FAIL_CALLBACK] = callback
        rec[FAIL_COUNT] += 1

    # inline="always": the user function is merged into `call` at numba's IR level. Called, it takes
    # each array as a 7-field struct (26 arguments, most on the stack) and refcounts them: that call
    # cost about as much as the whole C++ tick (EMA cross: 20 M quotes/s called, 45 M inlined, one
    # instrument, bench/test_compiled_bench.py). `call` itself takes pointers and sizes, a cheap call,
    # and is not inlined so that the cfunc's try catches what it raises (an inlined raise escapes it).
    # error_model="numpy": x / 0.0 is inf or NaN as with the numpy scalars the uncompiled path
    # computes on, not ZeroDivisionError.
    tick_fn = njit(on_tick, **_NJIT_OPTIONS)

    @njit(error_model="numpy")
    def call_tick(tick_p, params_p, n_params, state_p, n_inst, n_state, orders_p, cap):  # pragma: no cover - compiled
        return tick_fn(carray(tick_p, 1)[0], carray(params_p, n_params), carray(state_p, (n_inst, n_state)),
                       carray(orders_p, cap))

    @cfunc(tick_sig, nopython=True, error_model="numpy")
    def c_tick(user, tick_p, params_p, n_params, state_p, n_inst, n_state, orders_p, cap):  # pragma: no cover - compiled
        try:
            return call_tick(tick_p, params_p, n_params, state_p, n_inst, n_state, orders_p, cap)
        except Exception:  # noqa: BLE001 - recorded, raised in Python by CompiledStrategy.check
            tick = carray(tick_p, 1)[0]
            failed(user, tick.ts, tick.instrument, 1)
            return np.nan

    if on_event is None:
        return c_tick, None
    event_fn = njit(on_event, **_NJIT_OPTIONS)

    @njit(error_model="numpy")
    def call_event(ev_p, params_p, n_params, state_p, n_inst, n_state, orders_p, cap):  # pragma: no cover - compiled
        event_fn(carray(ev_p, 1)[0], carray(params_p, n_params), carray(state_p, (n_inst, n_state)), carray(orders_p, cap))

    @cfunc(event_sig, nopython=True, error_model="numpy")
    def c_event(user, ev_p, params_p, n_params, state_p, n_inst, n_state, orders_p, cap):  # pragma: no cover - compiled
        try:
            call_event(ev_p, params_p, n_params, state_p, n_inst, n_state, orders_p, cap)
        except Exception:  # noqa: BLE001 - recorded, raised in Python by CompiledStrategy.check
            ev = carray(ev_p, 1)[0]
            failed(user, ev.ts, ev.instrument, 2)

    return c_tick, c_event


class CompiledStrategy:
    """A per-tick strategy the core calls from its own loop (see the module docstring)."""

    def __init__(
        self,
        on_tick: Callable,
        on_event: Callable | None = None,
        *,
        params: Any = (),
        state_init: Any = (),
        name: str | None = None,
        compile: bool | None = None,
        orders_capacity: int = ORDERS_CAPACITY,
    ) -> None:
        """``compile``: True needs numba, False runs the Python functions, None (default) compiles
        when numba is installed."""
        if compile and not numba_available():
            raise ImportError("CompiledStrategy(compile=True) needs numba: pip install -e '.[compiled]'")
        self.on_tick = on_tick
        self.on_event = on_event
        self.params = np.ascontiguousarray(params, dtype=np.float64).reshape(-1)
        self.state_init = np.ascontiguousarray(state_init, dtype=np.float64).reshape(-1)
        self.name = name or getattr(on_tick, "__name__", "compiled")
        self.compile = numba_available() if compile is None else compile
        self.orders_capacity = orders_capacity
        self._cfuncs: tuple[Any, Any] | None = None
        self.compile_s = 0.0  # time spent compiling (first bind in the process; ~0 after)
        self._failures = np.zeros(FAIL_FIELDS, np.int64)  # the failure record of the latest bind

    @property
    def compiled(self) -> bool:
        return self.compile

    def cfuncs(self) -> tuple[Any, Any]:
        """The numba cfuncs (compiled once per strategy object)."""
        if self._cfuncs is None:
            t0 = time.perf_counter()
            self._cfuncs = _compile(self.on_tick, self.on_event)
            self.compile_s = time.perf_counter() - t0
        return self._cfuncs

    def prepare(self, instruments: InstrumentTable, *, initial_capital: float) -> np.ndarray:
        """The parameters the core gets for a run over ``instruments`` (called by ``bind``, once the
        instruments are known). The default: ``params`` as given."""
        return self.params

    def bind(self, core: Any, instruments: InstrumentTable, *, initial_capital: float) -> None:
        """Hand the functions and the prepared parameters to ``core`` (an engine._core.Backtester)."""
        params = np.ascontiguousarray(self.prepare(instruments, initial_capital=initial_capital), dtype=np.float64)
        self._failures = np.zeros(FAIL_FIELDS, np.int64)
        if self.compile:
            c_tick, c_event = self.cfuncs()
            on_tick, on_event = c_tick.address, (c_event.address if c_event is not None else None)
            user = self._failures
        else:
            on_tick, on_event, user = self.on_tick, self.on_event, None
        core.set_compiled_strategy(on_tick, on_event, params.reshape(-1), self.state_init, self.orders_capacity, user)

    def check(self) -> None:
        """Raise CompiledStrategyError if a compiled function raised since ``bind`` (the engine calls
        this after each run of the core; the uncompiled path raises the Python exception itself)."""
        rec = self._failures
        if rec[FAIL_COUNT] == 0:
            return
        raise CompiledStrategyError(
            f"compiled strategy {self.name}: {_CALLBACKS[int(rec[FAIL_CALLBACK])]} raised at the tick ts={rec[FAIL_TS]} "
            f"of instrument {rec[FAIL_INSTRUMENT]} ({rec[FAIL_COUNT]} failed calls in this run; each kept the target). "
            "numba does not carry the exception out: run it with compile=False to see the Python traceback."
        )
