// Python bindings of the compiled core. Arrays cross as numpy structured arrays whose dtypes are
// the C++ structs; inputs are taken without copying (a mismatched dtype is refused, not converted).
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <utility>

#include "backtester.hpp"
#include "bind_ssm.hpp"
#include "conflator.hpp"
#include "ssm.hpp"
#include "quote.hpp"

namespace py = pybind11;
using namespace nextick;

using QuoteArray = py::array_t<Quote, py::array::c_style>;

namespace {

std::string build_info() {
    std::string s = "version=" NEXTICK_VERSION;
    // The vector unit the core (tick loop, features) was compiled for; the SSM kernel has its own
    // variants, chosen at run time.
#if defined(__AVX512F__)
    s += " simd=avx512";
#elif defined(__AVX2__)
    s += " simd=avx2";
#elif defined(__ARM_NEON)
    s += " simd=neon";
#else
    s += " simd=baseline";
#endif
    std::string kernels;
    for (const auto& k : nextick::SsmModel::kernels()) kernels += (kernels.empty() ? "" : ",") + k;
    s += " ssm_kernels=" + kernels;
    // The CUDA backend (engine._core.CudaSsmModel) is built only with NEXTICK_CUDA=ON.
#if defined(NEXTICK_HAVE_CUDA)
    s += " cuda=" NEXTICK_CUDA_VERSION " cuda_archs=" NEXTICK_CUDA_ARCHS;
#else
    s += " cuda=off";
#endif
#if defined(__VERSION__)
    s += " compiler=\"" __VERSION__ "\"";
#endif
    return s;
}

template <class T>
py::array_t<T> to_numpy(const std::vector<T>& v) {
    py::array_t<T> out(static_cast<py::ssize_t>(v.size()));
    if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(T));
    return out;
}

template <class T>
py::array_t<T> tail_numpy(const std::vector<T>& v, size_t start) {
    const size_t k = std::min(start, v.size());
    py::array_t<T> out(static_cast<py::ssize_t>(v.size() - k));
    if (v.size() > k) std::memcpy(out.mutable_data(), v.data() + k, (v.size() - k) * sizeof(T));
    return out;
}

QuoteArray quotes_to_numpy(const std::vector<Quote>& v) { return to_numpy(v); }

// Built-in strategy names, as strategies.builtin.BUILTINS spells them (the Python strategy's kind
// is set by set_python_strategy, never by name).
constexpr std::pair<const char*, StrategyKind> kStrategyKinds[] = {
    {"momentum", StrategyKind::kMomentum},   {"mean_reversion", StrategyKind::kMeanReversion},
    {"buy_hold", StrategyKind::kBuyHold},    {"ssm_threshold", StrategyKind::kSsmThreshold},
    {"none", StrategyKind::kNone},           {"python", StrategyKind::kPython},
};

StrategyKind parse_kind(const std::string& name) {
    std::string known;
    for (const auto& [n, kind] : kStrategyKinds) {
        if (name == n && kind != StrategyKind::kPython) return kind;
        if (kind != StrategyKind::kPython) known += (known.empty() ? "" : ", ") + std::string(n);
    }
    throw py::value_error("unknown built-in strategy '" + name + "'; use " + known);
}

const char* kind_name(StrategyKind kind) {
    for (const auto& [n, k] : kStrategyKinds)
        if (k == kind) return n;
    return "?";
}

std::string param_names() {
    std::string out;
    for (const auto& p : kStrategyParams) out += (out.empty() ? "" : ", ") + std::string(p.name);
    return out;
}

// StrategyParams from {name: value}: names not given keep their default (strategies.hpp); a name
// that is not a parameter is refused with the valid ones.
StrategyParams params_from(const std::string& kind, const py::dict& values) {
    StrategyParams p;
    p.kind = parse_kind(kind);
    for (const auto& [key, value] : values) {
        const std::string name = py::cast<std::string>(key);
        const StrategyParamInfo* info = nullptr;
        for (const auto& candidate : kStrategyParams)
            if (name == candidate.name) info = &candidate;
        if (info == nullptr)
            throw py::value_error("unknown parameter '" + name + "' for built-in strategy '" + kind +
                                  "'; valid parameters: " + param_names());
        try {
            p.*(info->field) = py::cast<double>(value);
        } catch (const py::cast_error&) {
            throw py::value_error("parameter '" + name + "' must be a number, not " +
                                  py::cast<std::string>(py::repr(value)));
        }
    }
    if (std::isnan(p.notional))
        throw py::value_error("set_strategy: notional (currency per instrument at entry) must be given");
    return p;
}

py::dict params_dict(const StrategyParams& p) {
    py::dict d;
    d["kind"] = kind_name(p.kind);
    for (const auto& info : kStrategyParams) d[info.name] = p.*(info.field);
    return d;
}

// The uncompiled path of a compiled strategy: the same C signature, calling the Python functions with
// numpy views of the engine's buffers (a record array for the tick, so tick.mid and tick["mid"] both
// read as they do under numba). Views are rebuilt only when a buffer moves.
struct PyStrategy {
    py::object on_tick, on_event;
    py::array tick_rows, event_rows;  // one record each: the record the function gets is a copy
    py::object tick, event;           // tick_rows[0] / event_rows[0] as np.record
    const void* state_ptr = nullptr;
    int64_t n_instruments = -1;
    py::array state, params, orders;
    const void* params_ptr = nullptr;
    const void* orders_ptr = nullptr;

    void views(const double* p, int64_t n_params, double* st, int64_t n_inst, int64_t n_state, OrderRequest* o,
               int64_t cap) {
        if (st != state_ptr || n_inst != n_instruments) {
            state = py::array_t<double>({static_cast<py::ssize_t>(n_inst), static_cast<py::ssize_t>(n_state)}, st,
                                        py::none());
            state_ptr = st;
            n_instruments = n_inst;
        }
        if (p != params_ptr) {
            params = py::array_t<double>(static_cast<py::ssize_t>(n_params), p, py::none());
            params.attr("flags").attr("writeable") = false;
            params_ptr = p;
        }
        if (o != orders_ptr) {
            orders = py::array_t<OrderRequest>(static_cast<py::ssize_t>(cap), o, py::none())
                         .attr("view")(py::module_::import("numpy").attr("recarray"));
            orders_ptr = o;
        }
    }
};

// One call of a Python function with a copy of `rec` in `rows` (viewed as `view`). GIL taken here: the
// loop runs without it.
template <class Rec>
py::object call_python(void* user, const py::object PyStrategy::*fn, py::array PyStrategy::*rows,
                       const py::object PyStrategy::*view, const Rec* rec, const double* params, int64_t n_params,
                       double* state, int64_t n_inst, int64_t n_state, OrderRequest* orders, int64_t cap) {
    auto* u = static_cast<PyStrategy*>(user);
    u->views(params, n_params, state, n_inst, n_state, orders, cap);
    std::memcpy((u->*rows).mutable_data(), rec, sizeof(Rec));
    return (u->*fn)(u->*view, u->params, u->state, u->orders);
}

double py_on_tick(void* user, const BatchRow* tick, const double* params, int64_t n_params, double* state,
                  int64_t n_inst, int64_t n_state, OrderRequest* orders, int64_t cap) {
    py::gil_scoped_acquire gil;
    const py::object t = call_python(user, &PyStrategy::on_tick, &PyStrategy::tick_rows, &PyStrategy::tick, tick, params,
                                     n_params, state, n_inst, n_state, orders, cap);
    if (t.is_none()) return kNaN;
    const double target = PyFloat_AsDouble(t.ptr());  // what py::cast<double> does, with an error that names the function
    if (target == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        const py::object fn = static_cast<PyStrategy*>(user)->on_tick;
        const std::string name = py::hasattr(fn, "__qualname__") ? py::str(fn.attr("__qualname__")).cast<std::string>()
                                                                 : py::repr(fn).cast<std::string>();
        throw py::type_error("compiled strategy on_tick " + name + " returned " +
                             py::str(py::type::of(t).attr("__name__")).cast<std::string>() +
                             "; return the target position in units (a float), or NaN / None to keep the target");
    }
    return target;
}

void py_on_event(void* user, const StrategyEvent* ev, const double* params, int64_t n_params, double* state,
                 int64_t n_inst, int64_t n_state, OrderRequest* orders, int64_t cap) {
    py::gil_scoped_acquire gil;
    call_python(user, &PyStrategy::on_event, &PyStrategy::event_rows, &PyStrategy::event, ev, params, n_params, state,
                n_inst, n_state, orders, cap);
}

// Function addresses (ints) run as they are; Python functions run through PyStrategy, which the
// Backtester's Python object keeps alive (its `_py_strategy` attribute).
void set_compiled_strategy(py::object self, const py::object& on_tick, const py::object& on_event,
                           py::array_t<double, py::array::c_style | py::array::forcecast> params,
                           py::array_t<double, py::array::c_style | py::array::forcecast> state_init, size_t orders_cap,
                           const py::object& user) {
    Backtester& b = self.cast<Backtester&>();
    std::vector<double> p(params.data(), params.data() + params.size());
    std::vector<double> s0(state_init.data(), state_init.data() + state_init.size());
    const bool native = py::isinstance<py::int_>(on_tick);
    if (!on_event.is_none() && native != py::isinstance<py::int_>(on_event))
        throw py::value_error("set_compiled_strategy: on_tick and on_event must both be addresses or both be Python functions");
    if (native) {
        const auto tick_fn = reinterpret_cast<CompiledTickFn>(py::cast<uintptr_t>(on_tick));
        const auto event_fn = on_event.is_none() ? nullptr : reinterpret_cast<CompiledEventFn>(py::cast<uintptr_t>(on_event));
        // `user` (an int64 array, say, where compiled code records a failure) stays alive with the core.
        void* user_ptr = nullptr;
        if (!user.is_none()) {
            py::array a = user.cast<py::array>();
            if (!a.writeable()) throw py::value_error("set_compiled_strategy: user must be a writable array");
            user_ptr = a.mutable_data();
        }
        b.set_compiled_strategy(tick_fn, event_fn, user_ptr, std::move(p), std::move(s0), orders_cap);
        self.attr("_py_strategy") = py::none();
        self.attr("_compiled_user") = user;
        return;
    }
    auto holder = std::make_unique<PyStrategy>();
    const py::object recarray = py::module_::import("numpy").attr("recarray");
    holder->on_tick = on_tick;
    holder->on_event = on_event;
    holder->tick_rows = py::array_t<BatchRow>(1);
    holder->event_rows = py::array_t<StrategyEvent>(1);
    holder->tick = holder->tick_rows.attr("view")(recarray)[py::int_(0)];
    holder->event = holder->event_rows.attr("view")(recarray)[py::int_(0)];
    PyStrategy* raw = holder.get();
    b.set_compiled_strategy(&py_on_tick, on_event.is_none() ? nullptr : &py_on_event, raw, std::move(p), std::move(s0),
                            orders_cap);
    self.attr("_py_strategy") = py::capsule(holder.release(), [](void* x) { delete static_cast<PyStrategy*>(x); });
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "nextick compiled core: conflator, session tracker, tick loop, fill simulator";

    PYBIND11_NUMPY_DTYPE(Quote, ts_event, ts_recv, bid_px, ask_px, bid_sz, ask_sz, seq, instrument, flags);
    PYBIND11_NUMPY_DTYPE(Fill, order_id, decision_ts, fill_ts, px, sz, fee, decision_mid, slippage_bps, instrument, liquidity,
                         order_type);
    PYBIND11_NUMPY_DTYPE(OrderRequest, client_id, units, limit_px, stop_px, instrument, action, type, tif, pad);
    PYBIND11_NUMPY_DTYPE(StrategyEvent, ts, order_id, client_id, px, units, position, fee, instrument, kind, reason,
                         order_type, liquidity);
    PYBIND11_NUMPY_DTYPE(Trade, entry_ts, exit_ts, pnl, max_units, instrument, fills);
    PYBIND11_NUMPY_DTYPE(ResetEvent, ts, instrument, reason);
    PYBIND11_NUMPY_DTYPE(OrderEvent, order_id, ts, active_ts, units, decision_mid, instrument, kind);
    PYBIND11_NUMPY_DTYPE(BatchRow, ts, bid_px, ask_px, bid_sz, ask_sz, mid, pred_mid, pred_std, position, target,
                         instrument, reset, warm);
    PYBIND11_NUMPY_DTYPE(BookRow, ts, bid_px, ask_px, bid_sz, ask_sz, mid, pred_mid, position, working, instrument,
                         in_session, tradeable, warm);
    PYBIND11_NUMPY_DTYPE(TapRow, ts, bid_px, ask_px, mid, ret_bps, log_spread, imbalance, log_dt_ms, session_frac,
                         pred_mid, pred_std, out, instrument, reset);

    bind_backend(m);
    bind_ssm(m);
#if defined(NEXTICK_HAVE_CUDA)
    bind_cuda(m);
#endif
    m.def("build_info", &build_info, "Compiler, version and vector extensions the core was built with.");
    m.attr("ORDER_EVENT_KINDS") = py::make_tuple("new", "replaced", "session_close", "reset", "remainder", "end");
    m.attr("RESET_REASONS") = py::make_tuple("SESSION_OPEN", "GAP", "RECONNECT", "STALE", "MANUAL");
    m.attr("QUOTE_ITEMSIZE") = sizeof(Quote);
    m.attr("BATCH_ITEMSIZE") = sizeof(BatchRow);
    m.attr("BOOK_ITEMSIZE") = sizeof(BookRow);
    m.attr("N_FEATURES") = kNumFeatures;
    py::list strategy_params;
    for (const auto& info : kStrategyParams)
        strategy_params.append(py::make_tuple(info.name, info.default_value, info.doc));
    m.attr("STRATEGY_PARAMS") = py::tuple(strategy_params);

    py::class_<Conflator>(m, "Conflator", "One snapshot per instrument per interval; see csrc/conflator.hpp.")
        .def(py::init<int64_t>(), py::arg("interval_ns"))
        .def("push",
             [](Conflator& c, QuoteArray in) {
                 std::vector<Quote> out;
                 {
                     py::gil_scoped_release nogil;
                     c.push(in.data(), static_cast<size_t>(in.size()), out);
                 }
                 return quotes_to_numpy(out);
             },
             py::arg("quotes").noconvert(), "Feed quotes; returns the snapshots of intervals now complete.")
        .def("flush_until",
             [](Conflator& c, int64_t now_ns) {
                 std::vector<Quote> out;
                 c.flush_until(now_ns, out);
                 return quotes_to_numpy(out);
             },
             py::arg("now_ns"), "Snapshots of intervals ending at or before now_ns.")
        .def("flush",
             [](Conflator& c) {
                 std::vector<Quote> out;
                 c.flush(out);
                 return quotes_to_numpy(out);
             },
             "Everything still pending (end of stream).")
        .def_property_readonly("interval_ns", &Conflator::interval_ns)
        .def_property_readonly("quotes_in", &Conflator::quotes_in)
        .def_property_readonly("snapshots_out", &Conflator::snapshots_out);

    py::class_<Backtester>(m, "Backtester", "The tick loop and fill simulator; see csrc/backtester.hpp.", py::dynamic_attr())
        .def(py::init([](int64_t latency_ns, double fee_bps, double fee_per_fill, bool size_cap,
                         bool cancel_remainder, bool flatten_at_close, int64_t flatten_lead_ns,
                         double initial_capital, int64_t bar_ns, double maker_fee_bps, const std::string& queue) {
                 EngineConfig c;
                 if (queue != "through" && queue != "touch")
                     throw py::value_error("queue must be 'through' (resting limits fill when the price trades through "
                                           "them) or 'touch' (also when it touches them), not '" + queue + "'");
                 c.exec.queue = static_cast<uint8_t>(queue == "touch" ? QueueModel::kTouch : QueueModel::kThrough);
                 c.exec.maker_fee_bps = maker_fee_bps;
                 c.exec.latency_ns = latency_ns;
                 c.exec.fee_bps = fee_bps;
                 c.exec.fee_per_fill = fee_per_fill;
                 c.exec.size_cap = size_cap;
                 c.exec.cancel_remainder = cancel_remainder;
                 c.exec.flatten_at_close = flatten_at_close;
                 c.exec.flatten_lead_ns = flatten_lead_ns;
                 c.initial_capital = initial_capital;
                 c.bar_ns = bar_ns;
                 return new Backtester(c);
             }),
             py::kw_only(), py::arg("latency_ns") = 0, py::arg("fee_bps") = 0.0, py::arg("fee_per_fill") = 0.0,
             py::arg("size_cap") = false, py::arg("cancel_remainder") = false, py::arg("flatten_at_close") = false,
             py::arg("flatten_lead_ns") = 60'000'000'000LL, py::arg("initial_capital") = 1'000'000.0,
             py::arg("bar_ns") = 60'000'000'000LL, py::arg("maker_fee_bps") = std::numeric_limits<double>::quiet_NaN(),
             py::arg("queue") = "through")
        .def("add_instrument",
             [](Backtester& b, double lot_size, int64_t gap_ns, int32_t warmup_ticks) {
                 return b.add_instrument(InstrumentSpec{lot_size, gap_ns, warmup_ticks});
             },
             py::kw_only(), py::arg("lot_size"), py::arg("gap_ns"), py::arg("warmup_ticks"))
        .def("add_sessions",
             [](Backtester& b, uint32_t i, py::array_t<int64_t, py::array::c_style | py::array::forcecast> opens,
                py::array_t<int64_t, py::array::c_style | py::array::forcecast> closes) {
                 if (opens.size() != closes.size()) throw py::value_error("opens and closes differ in length");
                 b.add_sessions(i, opens.data(), closes.data(), static_cast<size_t>(opens.size()));
             },
             py::arg("instrument"), py::arg("opens_ns"), py::arg("closes_ns"))
        .def("set_strategy",
             [](Backtester& b, const std::string& kind, const py::dict& params) {
                 const StrategyParams p = params_from(kind, params);
                 if (p.kind == StrategyKind::kSsmThreshold && !b.has_model())
                     throw py::value_error("ssm_threshold needs a model: call set_model first");
                 b.set_strategy(p);
             },
             py::arg("kind"), py::arg("params"),
             "Configure a built-in strategy: params maps names of STRATEGY_PARAMS to values; the rest keep "
             "their defaults.")
        .def("strategy_params", [](const Backtester& b) { return params_dict(b.strategy_params()); },
             "The strategy as the core is configured: kind and every parameter.")
        .def("set_model",
             [](Backtester& b, const py::object& model,
                py::array_t<double, py::array::c_style | py::array::forcecast> mean,
                py::array_t<double, py::array::c_style | py::array::forcecast> std, double target_mean,
                double target_std, int variants) {
                 if (mean.size() != kNumFeatures || std.size() != kNumFeatures)
                     throw py::value_error("set_model: mean and std need " + std::to_string(kNumFeatures) + " values");
                 SignalModel m;
                 m.model = as_backend(model);
                 for (int k = 0; k < kNumFeatures; ++k) {
                     m.mean[k] = mean.data()[k];
                     m.std[k] = std.data()[k];
                 }
                 m.target_mean = target_mean;
                 m.target_std = target_std;
                 m.variants = variants;
                 b.set_model(m);
             },
             py::arg("model"), py::kw_only(), py::arg("mean"), py::arg("std"), py::arg("target_mean"),
             py::arg("target_std"), py::arg("variants") = 1,
             "Step this model backend (an engine._core.ModelBackend such as SsmModel, or any object with its "
             "methods: engine.model.backend) per in-session tick, slot = instrument, and hand predictions to "
             "strategies. variants > 1: MC dropout, each instrument steps as that many rows (slot = instrument * "
             "variants + v; the backend's masks give slot s variant s % variants); strategies get the mean "
             "predicted mid and its sample std across variants.")
        .def("set_tap", &Backtester::set_tap, py::arg("on"),
             "Record every in-session tick's features and prediction (training sets, parity tests).")
        .def("take_tap", [](Backtester& b) { return to_numpy(b.take_tap()); },
             "The rows recorded since the last call (engine.training.dataset reads them).")
        .def("set_python_strategy",
             [](Backtester& b) {
                 StrategyParams p;
                 p.kind = StrategyKind::kPython;
                 b.set_strategy(p);
             },
             "Decisions come from run_batched's callback; run() is refused.")
        .def("request_reset", &Backtester::request_reset, py::arg("instrument"), py::arg("at_ns") = INT64_MIN,
             "MANUAL reset, applied at the instrument's first in-session tick at or after at_ns.")
        .def("run",
             [](Backtester& b, QuoteArray q) {
                 py::gil_scoped_release nogil;
                 b.run_builtin(q.data(), static_cast<size_t>(q.size()));
             },
             py::arg("quotes").noconvert(), "Run quotes through the built-in strategy.")
        .def("run_batched",
             [](Backtester& b, QuoteArray q, py::array_t<BatchRow, py::array::c_style> buf,
                const std::function<void(size_t)>& on_batch) {
                 b.run_batched(q.data(), static_cast<size_t>(q.size()), buf.mutable_data(),
                               static_cast<size_t>(buf.size()), on_batch);
             },
             py::arg("quotes").noconvert(), py::arg("buffer").noconvert(), py::arg("on_batch"),
             "Run quotes through a Python strategy called once per tick batch.")
        .def("set_host_buffers",
             [](Backtester& b, py::array_t<OrderRequest, py::array::c_style> requests,
                py::array_t<StrategyEvent, py::array::c_style> events, std::function<void(size_t)> on_events) {
                 b.set_host_buffers(requests.mutable_data(), static_cast<size_t>(requests.size()), events.mutable_data(),
                                    static_cast<size_t>(events.size()), std::move(on_events));
             },
             py::arg("requests").noconvert(), py::arg("events").noconvert(), py::arg("on_events"),
             py::keep_alive<1, 2>(), py::keep_alive<1, 3>(),
             "A Python strategy's order requests (read after each batch's targets, then cleared) and its event "
             "buffer: before a batch, pending events are copied in and on_events(n) is called.")
        .def("set_compiled_strategy", &set_compiled_strategy, py::arg("on_tick"), py::arg("on_event"), py::arg("params"),
             py::arg("state_init"), py::arg("orders_cap") = 16, py::arg("user") = py::none(),
             "A compiled strategy decides per tick in run(): on_tick and on_event are C function addresses (ints, "
             "csrc/orders.hpp CompiledTickFn / CompiledEventFn, e.g. numba cfunc .address) or Python functions "
             "called with the same arguments as numpy views (the uncompiled path); on_event may be None. user: a "
             "numpy array whose data pointer the addresses get as their `user` argument (kept alive with the core).")
        .def("set_order_latency",
             [](Backtester& b, py::array_t<int64_t, py::array::c_style | py::array::forcecast> quantiles_ns, uint64_t seed) {
                 if (quantiles_ns.size() == 0) throw py::value_error("set_order_latency: the table is empty");
                 b.set_order_latency(std::vector<int64_t>(quantiles_ns.data(), quantiles_ns.data() + quantiles_ns.size()),
                                     seed);
             },
             py::arg("quantiles_ns"), py::arg("seed"),
             "Each order, cancel or replace waits a delay drawn from this sorted quantile table (ns) instead of "
             "latency_ns: the k-th of instrument i waits table[draw(seed, i, k)] (engine/domain/latency_model.py).")
        .def("compiled_state",
             [](const Backtester& b) {
                 const CompiledStrategy& cs = b.compiled();
                 const auto n_state = static_cast<py::ssize_t>(cs.state_init.size());
                 const auto n_inst = static_cast<py::ssize_t>(b.n_instruments());
                 py::array_t<double> out({n_inst, n_state});
                 if (!cs.state.empty()) std::memcpy(out.mutable_data(), cs.state.data(), cs.state.size() * sizeof(double));
                 return out;
             },
             "A copy of the compiled strategy's state, [n_instruments, n_state].")
        .def("set_rebalance_ns", &Backtester::set_rebalance_ns, py::arg("period_ns"),
             "Portfolio strategies: 0 = decide at every tick batch, else at the first batch at or after each "
             "multiple of period_ns since the UTC epoch.")
        .def("run_portfolio",
             [](Backtester& b, QuoteArray q, py::array_t<BatchRow, py::array::c_style> buf,
                py::array_t<BookRow, py::array::c_style> book, py::array_t<double, py::array::c_style> targets,
                const std::function<int(size_t, int64_t, double, double)>& on_rebalance) {
                 if (targets.size() != book.size())
                     throw py::value_error("targets has " + std::to_string(targets.size()) + " entries for a book of " +
                                           std::to_string(book.size()) + " rows");
                 b.run_portfolio(q.data(), static_cast<size_t>(q.size()), buf.mutable_data(),
                                 static_cast<size_t>(buf.size()), book.mutable_data(), targets.data(),
                                 static_cast<size_t>(book.size()), on_rebalance);
             },
             py::arg("quotes").noconvert(), py::arg("buffer").noconvert(), py::arg("book").noconvert(),
             py::arg("targets").noconvert(), py::arg("on_rebalance"),
             "Run quotes through a portfolio strategy: on_rebalance(n_rows, ts_ns, cash, equity) reads the book "
             "and the batch, writes targets (one per instrument) and returns 0 (none), 1 (units) or 2 (weights).")
        .def("set_order_log", &Backtester::set_order_log, py::arg("on"),
             "Record order events (placed, cancelled) until take_order_log().")
        .def("take_order_log", [](Backtester& b) { return to_numpy(b.take_order_log()); })
        .def("set_stamping", &Backtester::set_stamping, py::arg("on"),
             "Stamp the stages of each run call's last batch with the monotonic clock (stamps()).")
        .def("stamps",
             [](const Backtester& b) {
                 const StageStamps& s = b.stamps();
                 return py::make_tuple(s.state_ns, s.signal_ns, s.decision_ns, s.order_ns, s.batches);
             },
             "(state_ns, signal_ns, decision_ns, order_ns, batches): time.monotonic_ns() clock.")
        .def("restore_fills",
             [](Backtester& b, py::array_t<Fill, py::array::c_style> f) {
                 for (py::ssize_t k = 0; k < f.size(); ++k) b.restore_fill(f.data()[k]);
             },
             py::arg("fills").noconvert(), "Re-book journaled fills (in order) after a restart.")
        .def("resume_session", &Backtester::resume_session, py::arg("instrument"), py::arg("at_ns"),
             "After a restart: the session open at at_ns counts as already open (no SESSION_OPEN reset).")
        .def("set_next_order_id", &Backtester::set_next_order_id, py::arg("order_id"))
        .def_property_readonly("next_order_id", &Backtester::next_order_id)
        .def("finish", &Backtester::finish)
        .def("fills", [](const Backtester& b) { return to_numpy(b.fills()); })
        .def("fills_since", [](const Backtester& b, size_t k) { return tail_numpy(b.fills(), k); }, py::arg("start"),
             "fills()[start:] without copying the earlier ones (the live path reads only what is new).")
        .def("resets_since", [](const Backtester& b, size_t k) { return tail_numpy(b.resets(), k); }, py::arg("start"))
        .def_property_readonly("n_fills", [](const Backtester& b) { return b.fills().size(); })
        .def_property_readonly("n_resets", [](const Backtester& b) { return b.resets().size(); })
        .def("trades", [](const Backtester& b) { return to_numpy(b.trades()); })
        .def("resets", [](const Backtester& b) { return to_numpy(b.resets()); })
        .def("equity_curve",
             [](const Backtester& b) {
                 return py::make_tuple(to_numpy(b.equity_ts()), to_numpy(b.equity_values()),
                                       to_numpy(b.equity_gross()));
             },
             "(ts_ns, equity, gross_exposure) sampled at bar ends, first and last tick.")
        .def("positions",
             [](const Backtester& b) {
                 std::vector<double> p(b.n_instruments());
                 for (size_t i = 0; i < p.size(); ++i) p[i] = b.position_units(static_cast<uint32_t>(i));
                 return to_numpy(p);
             })
        .def("marks",
             [](const Backtester& b) {
                 std::vector<double> m(b.n_instruments());
                 for (size_t i = 0; i < m.size(); ++i) m[i] = b.mark(static_cast<uint32_t>(i));
                 return to_numpy(m);
             },
             "Each instrument's mark (the mid its position is valued at; 0 before its first two-sided tick).")
        .def("outside_session_by_instrument", [](const Backtester& b) { return to_numpy(b.outside_by_instrument()); })
        .def_property_readonly("cash", &Backtester::cash)
        .def_property_readonly("equity", &Backtester::equity)
        .def_property_readonly("n_instruments", &Backtester::n_instruments)
        .def("counters", [](const Backtester& b) {
            const Counters& c = b.counters();
            py::dict d;
            d["ticks"] = c.ticks;
            d["ticks_in_session"] = c.ticks_in_session;
            d["ticks_outside_session"] = c.ticks_outside_session;
            d["orders"] = c.orders;
            d["orders_replaced"] = c.orders_replaced;
            d["cancelled_session_close"] = c.cancelled_session_close;
            d["cancelled_reset"] = c.cancelled_reset;
            d["cancelled_remainder"] = c.cancelled_remainder;
            d["cancelled_end"] = c.cancelled_end;
            d["flatten_missed"] = c.flatten_missed;
            d["rebalances"] = c.rebalances;
            d["targets_skipped"] = c.targets_skipped;
            d["explicit_orders"] = c.explicit_orders;
            d["orders_rejected"] = c.orders_rejected;
            d["explicit_cancelled"] = c.explicit_cancelled;
            d["maker_fills"] = c.maker_fills;
            py::dict r;
            const char* names[5] = {"SESSION_OPEN", "GAP", "RECONNECT", "STALE", "MANUAL"};
            for (int k = 0; k < 5; ++k) r[names[k]] = c.resets[k];
            d["resets"] = r;
            return d;
        });

}
