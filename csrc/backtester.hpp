// The tick loop: session tracking, resets, fills, marks, strategy decisions, orders, portfolio.
//
// Per tick of instrument i at ts (the quote's ts_recv), in this order:
//   1. equity sample if ts crossed a bar boundary (marks as of the previous tick)
//   2. session: outside -> counted, nothing else; new session / gap / reconnect / stale / manual
//      -> reset (state zeroed, warm-up restarts, working order cancelled)
//   3. the working order of i fills if ts > its decision time + latency
//   4. mark i at mid
//   5. signal: features updated (csrc/features.hpp) and, with a model set, the SSM stepped for
//      the instruments ticking at this timestamp; the prediction is the mid expected K ticks ahead
//   6. strategy decides a target (built-in here, or a Python callback per tick batch)
//   7. warm-up clamp (no opening or increasing), flatten-at-close override
//   8. order for target - position, replacing a different working order
// Instruments interact only through cash, so processing a batch row by row or all fills first
// gives identical results: fills do not depend on batch composition.
//
// Explicit orders (csrc/orders.hpp: limit, stop, stop-limit, cancel, replace) live beside the target
// order: any number per instrument (up to kMaxWorkingOrders), filled at step 3 after the target
// order, in the order they were placed. Requests are read after the strategy's decision and target
// order (step 8), in the order written. Events (fills, rejects, cancels, resets, session open and
// close) go to a compiled strategy's on_event as they happen (its requests are read right after),
// and to a Python strategy's host before its next batch (a portfolio's: before its next rebalance).
//
// A portfolio strategy (run_portfolio) decides at step 6 for every instrument, ticking now or not,
// at each batch or on a rebalance clock; steps 7-8 are the same rule (order_toward), so an order on
// an instrument that is not ticking fills at its first tick after the decision plus latency.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "execution.hpp"
#include "features.hpp"
#include "latency.hpp"
#include "quote.hpp"
#include "session.hpp"
#include "model_backend.hpp"
#include "orders.hpp"
#include "strategies.hpp"

namespace nextick {

struct InstrumentSpec {
    double lot_size = 1.0;
    int64_t gap_ns = 60'000'000'000;
    int32_t warmup_ticks = 0;
};

struct EngineConfig {
    ExecConfig exec;
    double initial_capital = 1'000'000.0;
    int64_t bar_ns = 60'000'000'000;  // equity sampling period
};

// One instrument as a portfolio strategy sees it at a rebalance; layout mirrors
// strategies.portfolio.BOOK_DTYPE. The last-tick fields are written as ticks arrive (the last
// in-session two-sided tick: what reached the strategy layer); the rest at each rebalance.
struct BookRow {
    int64_t ts;           // ts_recv of that tick; 0 before the first
    double bid_px, ask_px, bid_sz, ask_sz;  // NaN, NaN, 0, 0 before the first tick
    double mid;           // the mark (decision mid; weights convert at it); NaN without one
    double pred_mid;      // the model's expected mid at that tick (BatchRow::pred_mid); NaN without a model
    double position;      // units held
    double working;       // units still to fill on the working order (signed); 0 if none
    uint32_t instrument;
    uint8_t in_session;   // 1: the session of its last tick is open at the decision time
    uint8_t tradeable;    // 1: orders are placed (Backtester::tradeable)
    uint8_t warm;         // 1: tradeable and warm-up over (an order may open or increase a position)
    uint8_t pad;
};
static_assert(sizeof(BookRow) == 80, "BookRow must match BOOK_DTYPE");

// An explicit order working on one instrument (csrc/orders.hpp has the rules it fills by).
struct WorkingOrder {
    enum Phase : uint8_t { kWaiting = 0, kResting = 1, kTaking = 2 };
    uint64_t id = 0;
    uint64_t client_id = 0;
    int64_t decision_ts = 0;
    int64_t active_ts = 0;            // ticks after this see it
    int64_t cancel_ts = INT64_MAX;    // a cancel (or replace) requested: gone for ticks after this
    int64_t rest_ts = INT64_MAX;      // resting (maker) fills need a tick after this
    int64_t remaining_lots = 0;       // signed
    double limit_px = kNaN;
    double stop_px = kNaN;
    double decision_mid = 0.0;
    OrderType type = OrderType::kLimit;
    TimeInForce tif = TimeInForce::kGtc;
    uint8_t phase = kWaiting;         // waiting for arrival / trigger, resting at its limit, or taking at the touch
    uint8_t cancel_reason = 0;        // CancelReason, once cancel_ts is set
    bool keep_size = false;           // a replacement sized by what is left of the order it replaces
    uint64_t replaces = 0;            // a replacement not yet confirmed: the id of the order it replaces
};

// A compiled strategy (csrc/orders.hpp CompiledTickFn): the functions, their parameters, the state
// the engine keeps for them ([n_instruments x n_state], a new instrument gets state_init) and the
// request buffer each call may write.
struct CompiledStrategy {
    CompiledTickFn on_tick = nullptr;
    CompiledEventFn on_event = nullptr;
    void* user = nullptr;
    std::vector<double> params;
    std::vector<double> state_init;
    std::vector<double> state;
    std::vector<OrderRequest> orders;
};

// What a portfolio strategy's targets are: none this time, units, or fractions of equity.
enum class TargetKind : int { kNone = 0, kUnits = 1, kWeights = 2 };

// One in-session tick as the signal saw it: the training set is built from these rows, so the
// model trains on exactly the features it is fed at inference.
struct TapRow {
    int64_t ts;
    double bid_px, ask_px, mid;
    double ret_bps, log_spread, imbalance, log_dt_ms, session_frac;  // engine.model.config.FEATURE_NAMES
    double pred_mid;      // NaN without a model
    double pred_std;      // MC dropout: std of pred_mid across variants; 0 with one, NaN without a model
    float out;            // raw model output (normalized target; variant 0's under MC dropout); NaN without a model
    uint32_t instrument;
    uint8_t reset;
    uint8_t pad[7];
};
static_assert(sizeof(TapRow) == 104, "TapRow layout");

// The model (any backend: the C++ SSM kernel, or another behind the same seam) and the statistics
// that map features in and predictions out.
struct SignalModel {
    std::shared_ptr<ModelBackend> model;
    double mean[kNumFeatures] = {};
    double std[kNumFeatures] = {1.0, 1.0, 1.0, 1.0, 1.0};
    double target_mean = 0.0;   // output * target_std + target_mean = log-return to horizon, bps
    double target_std = 1.0;
    // MC dropout: each instrument steps as this many rows, slot = instrument * variants + v, and the
    // backend's variant of slot s is s % variants (SsmModel::set_dropout_masks). pred_mid is the
    // mean over the variants' predicted mids, pred_std their sample standard deviation.
    int variants = 1;
};

// Monotonic-clock stamps (CLOCK_MONOTONIC ns, Python's time.monotonic_ns) of the stages of the last
// timestamp batch a run call processed; taken only while stamping is on (the live path).
struct StageStamps {
    int64_t state_ns = 0;     // sessions, resets, fills and marks done for the batch
    int64_t signal_ns = 0;    // features and SSM step done
    int64_t decision_ns = 0;  // strategy targets decided
    int64_t order_ns = 0;     // orders placed or replaced
    uint64_t batches = 0;     // batches stamped so far
};

struct Counters {
    uint64_t ticks = 0;              // rows seen
    uint64_t ticks_in_session = 0;
    uint64_t ticks_outside_session = 0;
    uint64_t orders = 0;
    uint64_t orders_replaced = 0;
    uint64_t cancelled_session_close = 0;
    uint64_t cancelled_reset = 0;
    uint64_t cancelled_remainder = 0;
    uint64_t cancelled_end = 0;
    uint64_t flatten_missed = 0;     // sessions closed with a position despite flatten_at_close
    uint64_t rebalances = 0;         // portfolio strategy calls
    uint64_t targets_skipped = 0;    // portfolio targets (not NaN) on an instrument not tradeable then
    uint64_t resets[5] = {0, 0, 0, 0, 0};
    uint64_t explicit_orders = 0;    // explicit orders accepted (csrc/orders.hpp)
    uint64_t orders_rejected = 0;
    uint64_t explicit_cancelled = 0; // explicit orders cancelled, for any reason
    uint64_t maker_fills = 0;
};

class Backtester {
public:
    explicit Backtester(const EngineConfig& cfg);

    uint32_t add_instrument(const InstrumentSpec& spec);
    void add_sessions(uint32_t i, const int64_t* opens, const int64_t* closes, size_t n);
    void set_strategy(const StrategyParams& p);
    const StrategyParams& strategy_params() const { return strat_.params(); }
    // The model whose slot i is instrument i. Its state pool is sized (and zeroed) here; instruments
    // added later get fresh slots.
    void set_model(const SignalModel& m);
    bool has_model() const { return static_cast<bool>(sig_.model); }
    // Records every in-session tick's features (and prediction) until taken.
    void set_tap(bool on) { tap_on_ = on; }
    std::vector<TapRow> take_tap() { return std::move(tap_); }
    // Order events (placed, cancelled) are recorded until taken.
    void set_order_log(bool on) { order_log_on_ = on; }
    std::vector<OrderEvent> take_order_log() { return std::move(order_log_); }
    // Stage stamps of the last batch of each run call (see StageStamps).
    void set_stamping(bool on) { stamping_ = on; }
    const StageStamps& stamps() const { return stamps_; }
    // Re-books a fill from a journal after a restart: cash, position and the open round trip come
    // out exactly as when it happened. Later order ids stay above every restored one.
    void restore_fill(const Fill& f);
    void set_next_order_id(uint64_t id) { next_order_id_ = std::max(next_order_id_, id); }
    uint64_t next_order_id() const { return next_order_id_; }
    // After a restart: the session open at at_ns (if any) is the one instrument i was already in.
    void resume_session(uint32_t i, int64_t at_ns);
    // MANUAL reset of i at its first in-session tick with ts_recv >= at_ns.
    void request_reset(uint32_t i, int64_t at_ns);

    // A compiled strategy decides per tick (run_builtin runs it). `state_init` is one instrument's
    // initial state row; its length is n_state.
    void set_compiled_strategy(CompiledTickFn on_tick, CompiledEventFn on_event, void* user, std::vector<double> params,
                               std::vector<double> state_init, size_t orders_cap);
    const CompiledStrategy& compiled() const { return cs_; }
    // A Python strategy's host: requests it writes during a batch are read after the batch's targets;
    // events are copied into `events` (ev_cap at a time) and on_events(n) is called before the next
    // batch. Without a host (nullptr), events are not recorded.
    void set_host_buffers(OrderRequest* requests, size_t req_cap, StrategyEvent* events, size_t ev_cap,
                          std::function<void(size_t)> on_events);
    // Order latency drawn per message from a quantile table (engine/domain/latency_model.py): the
    // k-th message of instrument i waits draw(i, k), whatever the other instruments do.
    void set_order_latency(std::vector<int64_t> quantiles_ns, uint64_t seed) { order_lat_.set(std::move(quantiles_ns), seed); }

    // Runs rows through a built-in or compiled strategy.
    void run_builtin(const Quote* q, size_t n);
    // Runs rows through a Python strategy: batches of rows sharing ts_recv (each instrument at
    // most once per batch) are written to `buf` and `on_batch(n_rows)` is called once per batch.
    void run_batched(const Quote* q, size_t n, BatchRow* buf, size_t cap,
                     const std::function<void(size_t)>& on_batch);
    // Runs rows through a portfolio strategy. Batches are formed as in run_batched (the rows ticking
    // now go to `buf`); `book` (n_book >= n_instruments rows) keeps every instrument's last tick.
    // The strategy is due at every batch when the rebalance period is 0, else at the first batch at
    // or after each multiple of the period (UTC epoch). When due, the book's positions and session
    // state are brought to the batch's time and on_rebalance(n_rows, ts, cash, equity) is called; it
    // writes one target per instrument into `targets` (NaN = leave alone) and returns their
    // TargetKind, and place_targets turns them into orders.
    void run_portfolio(const Quote* q, size_t n, BatchRow* buf, size_t cap, BookRow* book, const double* targets,
                       size_t n_book, const std::function<int(size_t, int64_t, double, double)>& on_rebalance);
    void set_rebalance_ns(int64_t period_ns);

    // End of data: cancels working orders, takes the final equity sample.
    void finish();

    // Throws std::invalid_argument naming the row when the chunk breaks the stream contract.
    void check_rows(const Quote* q, size_t n) const;

    double equity() const;
    double gross_exposure() const;
    double position_units(uint32_t i) const { return pos_lots_[i] * lot_[i]; }
    // The mid i is marked at (its last two-sided tick in session; a restored fill's price), 0 before any.
    double mark(uint32_t i) const { return mark_[i]; }
    double cash() const { return cash_; }
    size_t n_instruments() const { return lot_.size(); }
    const std::vector<Fill>& fills() const { return fills_; }
    const std::vector<Trade>& trades() const { return trades_; }
    const std::vector<ResetEvent>& resets() const { return resets_; }
    const std::vector<int64_t>& equity_ts() const { return eq_ts_; }
    const std::vector<double>& equity_values() const { return eq_val_; }
    const std::vector<double>& equity_gross() const { return eq_gross_; }
    const Counters& counters() const { return c_; }
    const std::vector<uint64_t>& outside_by_instrument() const { return outside_; }
    const EngineConfig& config() const { return cfg_; }

private:
    bool begin_tick(const Quote& q, bool& reset);
    void end_tick(const Quote& q, double target_units);
    // The one rule from a target to an order, for a decision on the instrument's own tick and for a
    // portfolio decision on any instrument.
    void order_toward(uint32_t i, double target_units, int64_t ts, bool warming);
    // Targets for instruments 0..n-1 decided at ts (the batch being decided), ticking or not: units,
    // or weights of equity converted to units at each instrument's mark. An instrument that is not
    // tradeable at ts gets no order (counted in targets_skipped).
    void place_targets(const double* targets, size_t n, TargetKind kind, int64_t ts);
    // The session its last tick belonged to is still open at ts. One that has not ticked since its
    // session opened is not: its first tick resets it (SESSION_OPEN) and its mark is the last session's.
    bool in_session(uint32_t i, int64_t ts) const {
        const SessionState& s = sess_[i];
        return s.open_ns <= ts && ts < s.close_ns;
    }
    // flatten_at_close: from close - flatten_lead_ns on, targets are flat, explicit orders are
    // cancelled and new ones may only reduce the position.
    bool flattening(uint32_t i, int64_t ts) const {
        return cfg_.exec.flatten_at_close && ts >= sess_[i].close_ns - cfg_.exec.flatten_lead_ns;
    }
    // An order decided at ts could fill: i is in session, has a mark (the decision mid), and is not
    // stale, i.e. a tick after ts + latency would not come more than its gap threshold after its
    // last tick (that tick would reset it for the GAP and cancel the order before any fill).
    bool tradeable(uint32_t i, int64_t ts) const {
        return mark_[i] > 0.0 && in_session(i, ts) && ts + typical_latency() - sess_[i].last_tick_ns < sess_[i].gap_ns;
    }
    // One batch from row r (consecutive rows at one timestamp, each instrument at most once, at most
    // cap rows) through sessions, fills, marks and the signal; the in-session two-sided rows go to buf
    // (nb of them, their quote rows in batch_rows_). Returns the row after the batch.
    size_t next_batch(const Quote* q, size_t n, size_t r, BatchRow* buf, size_t cap, size_t& nb);
    void one_sided_tick(const Quote& q);
    // Features of the n rows q[rows[k]] (already through begin_tick) into x_, then one batched SSM
    // step; writes pred_mid and pred_std per row (NaN without a model).
    void signal(const Quote* q, const size_t* rows, const uint8_t* reset, size_t n, double* pred_mid, double* pred_std);
    void fill(uint32_t i, const Quote& q);
    void book_fill(uint32_t i, int64_t lots, double px, double fee, int64_t ts);
    // Books a fill of `lots` at px: position, cash, the fills table, the fill event, the built-in's bracket.
    void record_fill(uint32_t i, uint64_t order_id, uint64_t client_id, int64_t decision_ts, double decision_mid,
                     int64_t lots, double px, bool maker, OrderType type, int64_t ts);
    // The explicit orders of i against tick q (cancels due, arrivals, triggers, fills), in placement order.
    void fill_explicit(uint32_t i, const Quote& q);
    // One working order against q; true when it is done (filled, cancelled or rejected).
    bool step_order(uint32_t i, WorkingOrder& o, const Quote& q);
    // Takes at the touch (market, triggered stop, crossing limit) at most the shown size; returns lots filled.
    void take(uint32_t i, WorkingOrder& o, const Quote& q, bool maker, double px);
    int64_t capped(uint32_t i, const Quote& q, int64_t lots);
    void emit_cancel(uint32_t i, const WorkingOrder& o, CancelReason why, int64_t ts);
    void cancel_all_explicit(uint32_t i, CancelReason why, int64_t ts);
    // Requests from a strategy's buffer, decided at ts; the buffer is cleared.
    void process_requests(OrderRequest* req, size_t cap, int64_t ts);
    void submit(const OrderRequest& r, int64_t ts, uint64_t reuse_client_id);
    void reject(const OrderRequest& r, RejectReason why, int64_t ts);
    OrderRequest request_of(uint32_t i, const WorkingOrder& o, RequestAction action) const;
    int find_order(uint32_t i, uint64_t client_id) const;
    // The delay of the next message (order, cancel, replace) instrument i sends: the k-th draw of
    // the order-latency table, or the constant latency_ns without one.
    int64_t order_latency(uint32_t i) { return order_lat_.empty() ? cfg_.exec.latency_ns : order_lat_.draw(i, lat_k_[i]++); }
    // What "latency" means where one figure is needed (the staleness check of tradeable()).
    int64_t typical_latency() const { return order_lat_.empty() ? cfg_.exec.latency_ns : order_lat_.median_ns(); }
    void emit(const StrategyEvent& e) {
        if (events_on_) events_.push_back(e);
    }
    void emit_simple(EventKind kind, uint32_t i, int64_t ts, uint8_t reason);
    // A compiled strategy's on_event for each event recorded, its requests read after each.
    void dispatch_compiled_events();
    // A Python host's events, before its next batch.
    void drain_host_events();
    // The strategy's view of tick q (BatchRow), pred_mid / pred_std from the signal.
    void tick_row(BatchRow& b, const Quote& q, double pred_mid, double pred_std, bool reset, bool warming) const;
    double compiled_decide(const Quote& q, double pred_mid, double pred_std, bool reset, bool warming);
    void compiled_requests(int64_t ts) {
        if (!cs_.orders.empty() && cs_.orders[0].action != 0) process_requests(cs_.orders.data(), cs_.orders.size(), ts);
    }
    // ssm_threshold with stop_loss_bps / take_profit_bps: a stop and a take-profit limit around the
    // position from its entry fill, kept in step with the position as fills come (see backtester.cpp).
    void bracket(uint32_t i, int64_t before_lots, double px, uint64_t client_id);
    void bracket_update(uint32_t i, int64_t ts);
    bool brackets() const {
        const StrategyParams& p = strat_.params();
        return p.kind == StrategyKind::kSsmThreshold && (p.stop_loss_bps > 0 || p.take_profit_bps > 0);
    }
    void cancel(uint32_t i, uint64_t& counter, OrderEventKind why, int64_t ts);
    void log_order(const Order& o, uint32_t i, OrderEventKind kind, int64_t ts, int64_t lots);
    // The grouped loop: one timestamp's instruments through state, signal, decision and orders.
    void run_grouped(const Quote* q, size_t n);
    void sample_equity(int64_t ts);

    EngineConfig cfg_;
    BuiltinStrategy strat_;

    // per instrument
    std::vector<double> lot_;
    std::vector<SessionState> sess_;
    std::vector<Order> order_;
    std::vector<int64_t> pos_lots_;
    std::vector<double> mark_;
    std::vector<double> trade_cash_;     // cash flow of the open round trip, fees included
    std::vector<int64_t> trade_entry_ts_;
    std::vector<int64_t> trade_max_lots_;
    std::vector<uint32_t> trade_fills_;
    std::vector<uint64_t> outside_;
    std::vector<uint8_t> in_batch_;
    std::vector<uint8_t> reset_pending_;  // a reset met on a one-sided tick, for the next two-sided one
    std::vector<FeatureState> feat_;
    std::vector<std::vector<WorkingOrder>> xo_;  // explicit orders
    std::vector<double> entry_px_;                // bracket: the entry fill's price (NaN: none)
    std::vector<uint8_t> bracket_due_;
    LatencyTable order_lat_;
    int64_t shown_used_[2] = {0, 0};             // size cap: lots taken from this tick's bid [0] / ask [1]
    std::vector<uint64_t> lat_k_;                 // messages sent per instrument (order latency draws)            // bracket: 1 resize, 2 renew (a new entry) before the next step

    SignalModel sig_;
    bool tap_on_ = false;
    std::vector<TapRow> tap_;
    // signal scratch, grown to the largest batch seen, never per tick
    std::vector<double> f_;
    std::vector<float> x_, out_;
    std::vector<double> pv_;  // MC dropout: each variant's predicted mid, [rows][variants]
    std::vector<int32_t> slot_;
    std::vector<uint8_t> reset_;
    std::vector<double> pred_, pred_std_;
    std::vector<uint8_t> row_reset_;

    CompiledStrategy cs_;
    bool compiled_ = false;
    bool events_on_ = false;
    std::vector<StrategyEvent> events_;
    OrderRequest* host_req_ = nullptr;
    size_t host_req_cap_ = 0;
    StrategyEvent* host_ev_ = nullptr;
    size_t host_ev_cap_ = 0;
    std::function<void(size_t)> on_host_events_;

    bool order_log_on_ = false;
    std::vector<OrderEvent> order_log_;
    bool stamping_ = false;
    StageStamps stamps_;
    std::vector<double> target_;
    int64_t rebalance_ns_ = 0;
    int64_t next_rebalance_ns_ = INT64_MIN;

    double cash_;
    uint64_t next_order_id_ = 1;
    int64_t last_ts_ = INT64_MIN;
    int64_t next_bar_ns_ = INT64_MIN;
    std::vector<size_t> batch_rows_;

    std::vector<Fill> fills_;
    std::vector<Trade> trades_;
    std::vector<ResetEvent> resets_;
    std::vector<int64_t> eq_ts_;
    std::vector<double> eq_val_, eq_gross_;
    Counters c_;
};

}  // namespace nextick
