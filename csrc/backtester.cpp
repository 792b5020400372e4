#include "backtester.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace nextick {

namespace {

// Target units -> whole lots, toward zero. The epsilon absorbs representation error in
// target/lot (0.3/0.1 = 2.9999999999999996 must be 3 lots).
inline int64_t to_lots(double units, double lot) {
    const double x = units / lot;
    return static_cast<int64_t>(std::trunc(x + (x >= 0 ? 1e-9 : -1e-9)));
}

inline int64_t bar_end(int64_t ts, int64_t bar_ns) { return (ts / bar_ns + 1) * bar_ns; }

// Rounds toward minus infinity, so a rebalance clock is aligned to epoch multiples on both sides of 1970.
inline int64_t floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

// Signed so that a cost is > 0. "+ 0.0" turns a -0.0 (a sell exactly at the decision mid) into 0.0:
// a zero has one representation, so journals and hashes agree on it.
inline double slippage_bps(double side, double px, double decision_mid) {
    return side * (px - decision_mid) / decision_mid * 1e4 + 0.0;
}

// steady_clock is CLOCK_MONOTONIC on Linux: the clock Python's time.monotonic_ns reads.
inline int64_t mono_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

}  // namespace

Backtester::Backtester(const EngineConfig& cfg) : cfg_(cfg), cash_(cfg.initial_capital) {
    if (cfg.bar_ns <= 0) throw std::invalid_argument("bar_ns must be positive");
    if (cfg.exec.latency_ns < 0) throw std::invalid_argument("latency_ns must be >= 0");
    if (!(cfg.initial_capital > 0)) throw std::invalid_argument("initial_capital must be positive");
}

uint32_t Backtester::add_instrument(const InstrumentSpec& spec) {
    if (!(spec.lot_size > 0)) throw std::invalid_argument("lot_size must be positive");
    if (spec.gap_ns <= 0) throw std::invalid_argument("gap_ns must be positive");
    const size_t n = lot_.size() + 1;
    lot_.push_back(spec.lot_size);
    SessionState s;
    s.gap_ns = spec.gap_ns;
    s.warmup_ticks = spec.warmup_ticks;
    sess_.push_back(std::move(s));
    order_.emplace_back();
    pos_lots_.push_back(0);
    mark_.push_back(0.0);
    trade_cash_.push_back(0.0);
    trade_entry_ts_.push_back(0);
    trade_max_lots_.push_back(0);
    trade_fills_.push_back(0);
    outside_.push_back(0);
    in_batch_.push_back(0);
    reset_pending_.push_back(0);
    feat_.emplace_back();
    xo_.emplace_back();
    xo_.back().reserve(4);
    entry_px_.push_back(kNaN);
    bracket_due_.push_back(0);
    lat_k_.push_back(0);
    if (compiled_) cs_.state.insert(cs_.state.end(), cs_.state_init.begin(), cs_.state_init.end());
    strat_.resize(n);
    if (sig_.model) sig_.model->grow(static_cast<int>(n) * sig_.variants);
    return static_cast<uint32_t>(n - 1);
}

void Backtester::add_sessions(uint32_t i, const int64_t* opens, const int64_t* closes, size_t n) {
    if (i >= sess_.size()) throw std::out_of_range("add_sessions: unknown instrument " + std::to_string(i));
    for (size_t k = 0; k < n; ++k)
        if (closes[k] <= opens[k]) throw std::invalid_argument("add_sessions: a session closes before it opens");
    sess_[i].append(opens, closes, n);
}

void Backtester::set_strategy(const StrategyParams& p) { strat_.configure(p); }

void Backtester::set_model(const SignalModel& m) {
    if (!m.model) throw std::invalid_argument("set_model: no model");
    if (m.model->n_features() != kNumFeatures)
        throw std::invalid_argument("set_model: the model takes " + std::to_string(m.model->n_features()) +
                                    " features; the engine computes " + std::to_string(kNumFeatures));
    if (m.model->n_outputs() != 1)
        throw std::invalid_argument("set_model: the signal reads one output (predicted return); the model has " +
                                    std::to_string(m.model->n_outputs()));
    for (int k = 0; k < kNumFeatures; ++k)
        if (!(m.std[k] > 0.0) || !std::isfinite(m.mean[k]))
            throw std::invalid_argument("set_model: feature normalizer " + std::to_string(k) + " is not usable (std <= 0 or NaN)");
    if (!(m.target_std > 0.0)) throw std::invalid_argument("set_model: target_std must be positive");
    if (m.variants < 1) throw std::invalid_argument("set_model: variants must be >= 1");
    sig_ = m;
    sig_.model->resize(static_cast<int>(std::max<size_t>(lot_.size(), 1)) * sig_.variants);
    for (auto& f : feat_) f = FeatureState{};
}

void Backtester::signal(const Quote* q, const size_t* rows, const uint8_t* reset, size_t n, double* pred_mid,
                        double* pred_std) {
    const size_t V = static_cast<size_t>(sig_.variants);
    if (f_.size() < n * kNumFeatures) f_.resize(n * kNumFeatures);
    if (x_.size() < n * V * kNumFeatures) {
        x_.resize(n * V * kNumFeatures);
        out_.resize(n * V);
        pv_.resize(n * V);
        slot_.resize(n * V);
        reset_.resize(n * V);
    }
    for (size_t k = 0; k < n; ++k) {
        const Quote& x = q[rows[k]];
        FeatureState& st = feat_[x.instrument];
        if (reset[k]) st = FeatureState{};
        const SessionState& s = sess_[x.instrument];
        double* f = &f_[k * kNumFeatures];
        update_features(st, x, s.open_ns, s.close_ns, f);
        float* xk = &x_[k * V * kNumFeatures];
        if (sig_.model) {
            for (int j = 0; j < kNumFeatures; ++j) xk[j] = static_cast<float>((f[j] - sig_.mean[j]) / sig_.std[j]);
            for (size_t v = 1; v < V; ++v) std::copy(xk, xk + kNumFeatures, xk + v * kNumFeatures);
        }
        for (size_t v = 0; v < V; ++v) {
            slot_[k * V + v] = static_cast<int32_t>(x.instrument * V + v);
            reset_[k * V + v] = reset[k];
        }
    }
    if (sig_.model) {
        sig_.model->step(static_cast<int>(n * V), slot_.data(), x_.data(), reset_.data(), out_.data());
        for (size_t k = 0; k < n; ++k) {
            const double mid = mid_of(q[rows[k]]);
            // Mean and sample std of the variants' predicted mids, two passes in a fixed order (the
            // same bits every run); pv_ holds the variants' mids between them.
            double* pv = &pv_[k * V];
            double sum = 0.0;
            for (size_t v = 0; v < V; ++v) {
                const double ret_bps = static_cast<double>(out_[k * V + v]) * sig_.target_std + sig_.target_mean;
                pv[v] = mid * std::exp(ret_bps * 1e-4);
                sum += pv[v];
            }
            const double mean = sum / static_cast<double>(V);
            double ss = 0.0;
            for (size_t v = 0; V > 1 && v < V; ++v) ss += (pv[v] - mean) * (pv[v] - mean);
            pred_mid[k] = mean;  // sum / 1 is sum: one variant gives the plain prediction's bits
            pred_std[k] = V > 1 ? std::sqrt(ss / static_cast<double>(V - 1)) : 0.0;
        }
    } else {
        for (size_t k = 0; k < n; ++k) {
            out_[k * V] = std::numeric_limits<float>::quiet_NaN();
            pred_mid[k] = kNaN;
            pred_std[k] = kNaN;
        }
    }
    if (!tap_on_) return;
    for (size_t k = 0; k < n; ++k) {
        const Quote& x = q[rows[k]];
        const double* f = &f_[k * kNumFeatures];
        TapRow t{};
        t.ts = x.ts_recv;
        t.bid_px = x.bid_px;
        t.ask_px = x.ask_px;
        t.mid = mid_of(x);
        t.ret_bps = f[0];
        t.log_spread = f[1];
        t.imbalance = f[2];
        t.log_dt_ms = f[3];
        t.session_frac = f[4];
        t.pred_mid = pred_mid[k];
        t.pred_std = pred_std[k];
        t.out = out_[k * V];
        t.instrument = x.instrument;
        t.reset = reset[k];
        tap_.push_back(t);
    }
}

void Backtester::resume_session(uint32_t i, int64_t at_ns) {
    if (i >= sess_.size()) throw std::out_of_range("resume_session: unknown instrument " + std::to_string(i));
    sess_[i].resume(at_ns);
}

void Backtester::request_reset(uint32_t i, int64_t at_ns) {
    if (i >= sess_.size()) throw std::out_of_range("request_reset: unknown instrument " + std::to_string(i));
    sess_[i].manual_at_ns = std::min(sess_[i].manual_at_ns, at_ns);
}

void Backtester::check_rows(const Quote* q, size_t n) const {
    int64_t prev = last_ts_;
    const size_t n_inst = lot_.size();
    for (size_t r = 0; r < n; ++r) {
        if (q[r].instrument >= n_inst)
            throw std::invalid_argument("row " + std::to_string(r) + ": instrument id " +
                                        std::to_string(q[r].instrument) + " is not in the instrument table (" +
                                        std::to_string(n_inst) + " instruments)");
        if (q[r].ts_recv < prev)
            throw std::invalid_argument("row " + std::to_string(r) + ": ts_recv " + std::to_string(q[r].ts_recv) +
                                        " is earlier than the previous tick " + std::to_string(prev) +
                                        "; sources must yield quotes in non-decreasing ts_recv order");
        prev = q[r].ts_recv;
    }
}

double Backtester::equity() const {
    double e = cash_;
    for (size_t i = 0; i < lot_.size(); ++i) e += static_cast<double>(pos_lots_[i]) * lot_[i] * mark_[i];
    return e;
}

double Backtester::gross_exposure() const {
    double g = 0.0;
    for (size_t i = 0; i < lot_.size(); ++i) g += std::fabs(static_cast<double>(pos_lots_[i]) * lot_[i] * mark_[i]);
    return g;
}

void Backtester::sample_equity(int64_t ts) {
    if (eq_ts_.empty()) {
        eq_ts_.push_back(ts);
        eq_val_.push_back(cfg_.initial_capital);
        eq_gross_.push_back(0.0);
    } else {
        // Marks as of the last tick before the boundary: the bar's closing state.
        eq_ts_.push_back(next_bar_ns_);
        eq_val_.push_back(equity());
        eq_gross_.push_back(gross_exposure());
    }
    next_bar_ns_ = bar_end(ts, cfg_.bar_ns);
}

void Backtester::cancel(uint32_t i, uint64_t& counter, OrderEventKind why, int64_t ts) {
    if (order_log_on_) log_order(order_[i], i, why, ts, order_[i].remaining_lots);
    order_[i].remaining_lots = 0;
    ++counter;
}

void Backtester::log_order(const Order& o, uint32_t i, OrderEventKind kind, int64_t ts, int64_t lots) {
    order_log_.push_back(OrderEvent{o.id, ts, o.active_ts, static_cast<double>(lots) * lot_[i], o.decision_mid, i,
                                    static_cast<uint8_t>(kind), {0, 0, 0}});
}

void Backtester::restore_fill(const Fill& f) {
    const uint32_t i = f.instrument;
    if (i >= lot_.size()) throw std::out_of_range("restore_fill: unknown instrument " + std::to_string(i));
    const double x = f.sz / lot_[i];
    const int64_t lots = static_cast<int64_t>(std::llround(x));
    if (lots == 0 || std::fabs(x - static_cast<double>(lots)) > 1e-6)
        throw std::invalid_argument("restore_fill: size " + std::to_string(f.sz) + " is not a whole number of lots of " +
                                    std::to_string(lot_[i]));
    book_fill(i, lots, f.px, f.fee, f.fill_ts);
    fills_.push_back(f);
    mark_[i] = f.px;
    next_order_id_ = std::max(next_order_id_, f.order_id + 1);
}

void Backtester::book_fill(uint32_t i, int64_t lots, double px, double fee, int64_t ts) {
    const double lot = lot_[i];
    const int64_t before = pos_lots_[i];
    const int64_t after = before + lots;
    cash_ -= static_cast<double>(lots) * lot * px + fee;

    double& tc = trade_cash_[i];
    if (before == 0) {
        trade_entry_ts_[i] = ts;
        tc = -static_cast<double>(lots) * lot * px - fee;
        trade_max_lots_[i] = static_cast<int64_t>(std::llabs(after));
        trade_fills_[i] = 1;
    } else if (after == 0 || ((after > 0) != (before > 0))) {
        // The fill closes the round trip; on a flip its remainder opens the next one, and the
        // fee is split between the two in proportion to the lots.
        const int64_t closing = -before;
        const double frac = static_cast<double>(closing) / static_cast<double>(lots);
        tc += -static_cast<double>(closing) * lot * px - fee * frac;
        trades_.push_back(Trade{trade_entry_ts_[i], ts, tc, static_cast<double>(trade_max_lots_[i]) * lot, i,
                                trade_fills_[i] + 1});
        if (after != 0) {
            trade_entry_ts_[i] = ts;
            tc = -static_cast<double>(after) * lot * px - fee * (1.0 - frac);
            trade_max_lots_[i] = static_cast<int64_t>(std::llabs(after));
            trade_fills_[i] = 1;
        }
    } else {
        tc += -static_cast<double>(lots) * lot * px - fee;
        trade_max_lots_[i] = std::max(trade_max_lots_[i], static_cast<int64_t>(std::llabs(after)));
        ++trade_fills_[i];
    }
    pos_lots_[i] = after;
}

void Backtester::fill(uint32_t i, const Quote& q) {
    Order& o = order_[i];
    const bool buy = o.remaining_lots > 0;
    const double px = buy ? q.ask_px : q.bid_px;
    if (!(px > 0.0)) return;  // that side of the book is missing: keep waiting
    const int64_t lots = capped(i, q, o.remaining_lots);
    if (lots != 0) {
        o.remaining_lots -= lots;
        record_fill(i, o.id, 0, o.decision_ts, o.decision_mid, lots, px, false, OrderType::kMarket, q.ts_recv);
    }
    if (o.remaining_lots != 0 && cfg_.exec.cancel_remainder) cancel(i, c_.cancelled_remainder, OrderEventKind::kRemainder, q.ts_recv);
}

void Backtester::record_fill(uint32_t i, uint64_t order_id, uint64_t client_id, int64_t decision_ts,
                             double decision_mid, int64_t lots, double px, bool maker, OrderType type, int64_t ts) {
    const double lot = lot_[i];
    const double notional = std::fabs(static_cast<double>(lots)) * lot * px;
    const double fee_bps = maker && !std::isnan(cfg_.exec.maker_fee_bps) ? cfg_.exec.maker_fee_bps : cfg_.exec.fee_bps;
    const double fee = notional * fee_bps * 1e-4 + cfg_.exec.fee_per_fill;
    const double side = lots > 0 ? 1.0 : -1.0;
    const int64_t before = pos_lots_[i];
    book_fill(i, lots, px, fee, ts);
    Fill f{order_id, decision_ts, ts, px, static_cast<double>(lots) * lot, fee, decision_mid,
           slippage_bps(side, px, decision_mid), i, static_cast<uint8_t>(maker ? 1 : 0), static_cast<uint8_t>(type), {0, 0}};
    fills_.push_back(f);
    if (maker) ++c_.maker_fills;
    if (events_on_) {
        StrategyEvent e{};
        e.ts = ts;
        e.order_id = order_id;
        e.client_id = client_id;
        e.px = px;
        e.units = f.sz;
        e.position = position_units(i);
        e.fee = fee;
        e.instrument = i;
        e.kind = static_cast<uint8_t>(EventKind::kFill);
        e.order_type = static_cast<uint8_t>(type);
        e.liquidity = maker ? 1 : 0;
        emit(e);
    }
    if (brackets()) bracket(i, before, px, client_id);
}

bool Backtester::begin_tick(const Quote& q, bool& reset) {
    const uint32_t i = q.instrument;
    const int64_t ts = q.ts_recv;
    ++c_.ticks;
    if (ts >= next_bar_ns_) sample_equity(ts);
    last_ts_ = ts;

    SessionState& s = sess_[i];
    if (s.close_ns >= 0 && ts >= s.close_ns) {
        // First tick of i after its session closed: orders die with the session.
        if (order_[i].working()) cancel(i, c_.cancelled_session_close, OrderEventKind::kSessionClose, ts);
        cancel_all_explicit(i, CancelReason::kSessionClose, ts);
        if (cfg_.exec.flatten_at_close && pos_lots_[i] != 0) ++c_.flatten_missed;
        s.close_ns = -1;
        emit_simple(EventKind::kSessionClose, i, ts, 0);
    }
    ResetReason why = ResetReason::kNone;
    if (!s.advance(ts, q.flags, why)) {
        ++c_.ticks_outside_session;
        ++outside_[i];
        return false;
    }
    ++c_.ticks_in_session;
    reset = why != ResetReason::kNone;
    if (reset) {
        resets_.push_back(ResetEvent{ts, i, static_cast<uint8_t>(why), {0, 0, 0}});
        ++c_.resets[static_cast<int>(why)];
        s.warm_left = s.warmup_ticks;
        // A working order was decided on the state this reset discards.
        if (why == ResetReason::kSessionOpen) emit_simple(EventKind::kSessionOpen, i, ts, 0);
        emit_simple(EventKind::kReset, i, ts, static_cast<uint8_t>(why));
        if (order_[i].working()) cancel(i, c_.cancelled_reset, OrderEventKind::kReset, ts);
        cancel_all_explicit(i, CancelReason::kReset, ts);
    }
    shown_used_[0] = shown_used_[1] = 0;
    if (order_[i].working() && ts > order_[i].active_ts) fill(i, q);
    if (bracket_due_[i]) bracket_update(i, ts);
    if (!xo_[i].empty() && flattening(i, ts)) cancel_all_explicit(i, CancelReason::kSessionClose, ts);
    if (!xo_[i].empty()) fill_explicit(i, q);
    if (!two_sided(q)) {
        // No mid: keep the last mark, and hand the reset on to the next two-sided tick, where the
        // features, the model slot and the strategy start over.
        reset_pending_[i] = reset_pending_[i] || reset;
        return true;
    }
    mark_[i] = mid_of(q);
    reset = reset || reset_pending_[i];
    reset_pending_[i] = 0;
    return true;
}

void Backtester::end_tick(const Quote& q, double target_units) {
    SessionState& s = sess_[q.instrument];
    const bool warming = s.warm_left > 0;
    if (warming) --s.warm_left;
    order_toward(q.instrument, target_units, q.ts_recv, warming);
}

// The decision mid is the mark: the decision tick's mid when i is ticking, its last two-sided mid
// when it is not (a portfolio decision, or a one-sided tick flattening at the close).
void Backtester::order_toward(uint32_t i, double target_units, int64_t ts, bool warming) {
    const SessionState& s = sess_[i];
    if (flattening(i, ts)) target_units = 0.0;
    if (std::isnan(target_units)) return;

    const int64_t pos = pos_lots_[i];
    int64_t target = to_lots(target_units, lot_[i]);
    if (warming) target = std::clamp(target, std::min<int64_t>(0, pos), std::max<int64_t>(0, pos));

    Order& o = order_[i];
    if (target == pos + o.remaining_lots) return;  // already working toward it: keep its place
    if (o.working()) cancel(i, c_.orders_replaced, OrderEventKind::kReplaced, ts);
    if (target == pos) return;
    o.id = next_order_id_++;
    o.decision_ts = ts;
    o.active_ts = ts + order_latency(i);
    o.session_open = s.open_ns;
    o.remaining_lots = target - pos;
    o.decision_mid = mark_[i];
    ++c_.orders;
    if (order_log_on_) log_order(o, i, OrderEventKind::kNew, ts, o.remaining_lots);
}

void Backtester::place_targets(const double* targets, size_t n, TargetKind kind, int64_t ts) {
    // Weights convert at the equity of the decision: every position at its mark, before any order
    // of this rebalance fills.
    const double eq = kind == TargetKind::kWeights ? equity() : 0.0;
    for (uint32_t i = 0; i < n; ++i) {
        const double t = targets[i];
        if (std::isnan(t)) continue;
        if (!tradeable(i, ts)) {
            ++c_.targets_skipped;
            continue;
        }
        order_toward(i, kind == TargetKind::kWeights ? t * eq / mark_[i] : t, ts, sess_[i].warm_left > 0);
    }
}

// ------------------------------------------------------------------------------ explicit orders

void Backtester::emit_simple(EventKind kind, uint32_t i, int64_t ts, uint8_t reason) {
    if (!events_on_) return;
    StrategyEvent e{};
    e.ts = ts;
    e.px = kNaN;
    e.units = 0.0;
    e.position = position_units(i);
    e.instrument = i;
    e.kind = static_cast<uint8_t>(kind);
    e.reason = reason;
    emit(e);
}

int Backtester::find_order(uint32_t i, uint64_t client_id) const {
    const auto& v = xo_[i];
    for (size_t k = 0; k < v.size(); ++k)
        if (v[k].client_id == client_id && v[k].cancel_ts == INT64_MAX) return static_cast<int>(k);
    return -1;
}

void Backtester::emit_cancel(uint32_t i, const WorkingOrder& o, CancelReason why, int64_t ts) {
    ++c_.explicit_cancelled;
    if (!events_on_) return;
    StrategyEvent e{};
    e.ts = ts;
    e.order_id = o.id;
    e.client_id = o.client_id;
    e.px = kNaN;
    e.units = static_cast<double>(o.remaining_lots) * lot_[i];
    e.position = position_units(i);
    e.instrument = i;
    e.kind = static_cast<uint8_t>(EventKind::kCancelled);
    e.reason = static_cast<uint8_t>(why);
    e.order_type = static_cast<uint8_t>(o.type);
    emit(e);
}

void Backtester::cancel_all_explicit(uint32_t i, CancelReason why, int64_t ts) {
    for (const auto& o : xo_[i]) emit_cancel(i, o, why, ts);
    xo_[i].clear();
}

void Backtester::reject(const OrderRequest& r, RejectReason why, int64_t ts) {
    ++c_.orders_rejected;
    if (!events_on_) return;
    StrategyEvent e{};
    e.ts = ts;
    e.client_id = r.client_id;
    e.px = kNaN;
    e.units = r.units;
    e.position = r.instrument < lot_.size() ? position_units(r.instrument) : kNaN;
    e.instrument = r.instrument;
    e.kind = static_cast<uint8_t>(EventKind::kRejected);
    e.reason = static_cast<uint8_t>(why);
    e.order_type = r.type;
    emit(e);
}

// What an order was asked as, for a reject event that comes after its request was read.
OrderRequest Backtester::request_of(uint32_t i, const WorkingOrder& o, RequestAction action) const {
    return OrderRequest{o.client_id, static_cast<double>(o.remaining_lots) * lot_[i], o.limit_px, o.stop_px, i,
                        static_cast<uint8_t>(action), static_cast<uint8_t>(o.type), static_cast<uint8_t>(o.tif), 0};
}

// With the size cap, what tick q still shows on the side `lots` trades against: the orders of one
// tick share its displayed size, in the order they fill (the target order first).
int64_t Backtester::capped(uint32_t i, const Quote& q, int64_t lots) {
    if (!cfg_.exec.size_cap) return lots;
    const bool buy = lots > 0;
    const double shown = buy ? q.ask_sz : q.bid_sz;
    const int64_t avail = (shown > 0 ? static_cast<int64_t>(std::floor(shown / lot_[i] + 1e-9)) : 0) - shown_used_[buy];
    lots = buy ? std::min(lots, avail) : std::max(lots, -avail);
    shown_used_[buy] += buy ? lots : -lots;
    return lots;
}

// Fills at px for at most the shown size (size cap); a taker's fill unless `maker`.
void Backtester::take(uint32_t i, WorkingOrder& o, const Quote& q, bool maker, double px) {
    const int64_t lots = capped(i, q, o.remaining_lots);
    if (lots == 0) return;
    o.remaining_lots -= lots;
    record_fill(i, o.id, o.client_id, o.decision_ts, o.decision_mid, lots, px, maker, o.type, q.ts_recv);
}

// One order against tick q; returns true when it is done (filled, or rejected at arrival). An order
// to be cancelled now gets cancel_ts = INT64_MIN.
bool Backtester::step_order(uint32_t i, WorkingOrder& o, const Quote& q) {
    const int64_t ts = q.ts_recv;
    const bool buy = o.remaining_lots > 0;
    const double touch = buy ? q.ask_px : q.bid_px;  // the price it would take
    const bool have_touch = touch > 0.0;
    if (o.phase == WorkingOrder::kWaiting) {
        if (o.type == OrderType::kStop || o.type == OrderType::kStopLimit) {
            if (!(have_touch && (buy ? touch >= o.stop_px : touch <= o.stop_px))) return false;
            o.phase = o.type == OrderType::kStop ? WorkingOrder::kTaking : WorkingOrder::kResting;
        } else {
            o.phase = o.type == OrderType::kMarket ? WorkingOrder::kTaking : WorkingOrder::kResting;
        }
        if (o.phase == WorkingOrder::kResting) {
            // A limit arrives (a stop-limit is triggered): it takes what crosses now, and rests from the next tick.
            o.rest_ts = ts;
            const bool crosses = have_touch && (buy ? touch <= o.limit_px : touch >= o.limit_px);
            if (crosses && o.tif == TimeInForce::kPostOnly) {
                reject(request_of(i, o, RequestAction::kSubmit), RejectReason::kWouldCross, ts);
                return true;
            }
            if (crosses) take(i, o, q, false, touch);
            if (o.remaining_lots == 0) return true;
            if (o.tif == TimeInForce::kIoc) {
                o.cancel_ts = INT64_MIN;
                o.cancel_reason = static_cast<uint8_t>(CancelReason::kIocRemainder);
            }
            return false;
        }
    }
    if (o.phase == WorkingOrder::kTaking) {
        if (!have_touch) return false;
        take(i, o, q, false, touch);
        if (o.remaining_lots != 0 && cfg_.exec.cancel_remainder) {
            o.cancel_ts = INT64_MIN;
            o.cancel_reason = static_cast<uint8_t>(CancelReason::kIocRemainder);
        }
        return o.remaining_lots == 0;
    }
    // Resting at its limit: filled there when the other side trades through it (or touches it).
    if (ts <= o.rest_ts || !have_touch) return false;
    const bool through = buy ? touch < o.limit_px : touch > o.limit_px;
    const bool touched = cfg_.exec.queue == static_cast<uint8_t>(QueueModel::kTouch) && touch == o.limit_px;
    if (!through && !touched) return false;
    take(i, o, q, true, o.limit_px);
    return o.remaining_lots == 0;
}

// Nothing here adds or removes orders while it walks them (fills only mark a bracket sibling to go),
// so references stay valid; what is done is removed at the end, order kept.
void Backtester::fill_explicit(uint32_t i, const Quote& q) {
    const int64_t ts = q.ts_recv;
    auto& v = xo_[i];
    bool any_gone = false;
    for (auto& o : v) {
        // A replacement arriving unconfirmed: the order it replaces filled on the way, so there is
        // nothing to replace (a cancel arriving with it has nothing to cancel either).
        if (o.replaces != 0 && ts > o.active_ts) {
            reject(request_of(i, o, RequestAction::kReplace), RejectReason::kUnknownOrder, ts);
            o.remaining_lots = 0;
            any_gone = true;
            continue;
        }
        if (ts > o.cancel_ts) {  // the cancel reached the venue before this tick
            if (o.cancel_reason == static_cast<uint8_t>(CancelReason::kReplaced))
                for (auto& r : v)  // its replacement arrives now (placed after it, so stepped later in this pass)
                    if (r.replaces == o.id) {
                        if (r.keep_size) r.remaining_lots = o.remaining_lots;
                        r.replaces = 0;
                    }
            emit_cancel(i, o, static_cast<CancelReason>(o.cancel_reason), ts);
            o.remaining_lots = 0;
            any_gone = true;
            continue;
        }
        if (ts <= o.active_ts) continue;
        if (step_order(i, o, q)) {
            o.remaining_lots = 0;
            any_gone = true;
        }
    }
    // Cancelled just now (IOC remainder, OCO sibling): gone at once.
    for (auto& o : v)
        if (o.remaining_lots != 0 && o.cancel_ts == INT64_MIN) {
            emit_cancel(i, o, static_cast<CancelReason>(o.cancel_reason), ts);
            o.remaining_lots = 0;
            any_gone = true;
        }
    if (any_gone) v.erase(std::remove_if(v.begin(), v.end(), [](const WorkingOrder& o) { return o.remaining_lots == 0; }), v.end());
}

void Backtester::process_requests(OrderRequest* req, size_t cap, int64_t ts) {
    for (size_t k = 0; k < cap && req[k].action != 0; ++k) {
        const OrderRequest r = req[k];
        req[k].action = 0;
        if (r.instrument >= lot_.size()) {
            reject(r, RejectReason::kBadRequest, ts);
            continue;
        }
        const uint32_t i = r.instrument;
        switch (static_cast<RequestAction>(r.action)) {
            case RequestAction::kSubmit: {
                // A client id stays taken until its order is gone, a cancel on its way included: the
                // old order can still fill under it.
                const bool taken = r.client_id != 0 && std::any_of(xo_[i].begin(), xo_[i].end(), [&](const WorkingOrder& o) {
                                       return o.client_id == r.client_id;
                                   });
                if (taken) {
                    reject(r, RejectReason::kDuplicateId, ts);
                    break;
                }
                submit(r, ts, 0);
                break;
            }
            case RequestAction::kCancel: {
                const int k2 = r.client_id != 0 ? find_order(i, r.client_id) : -1;
                if (k2 < 0) {
                    reject(r, RejectReason::kUnknownOrder, ts);
                    break;
                }
                WorkingOrder& o = xo_[i][static_cast<size_t>(k2)];
                o.cancel_ts = ts + order_latency(i);
                o.cancel_reason = static_cast<uint8_t>(CancelReason::kRequested);
                break;
            }
            case RequestAction::kReplace: {
                const int k2 = r.client_id != 0 ? find_order(i, r.client_id) : -1;
                if (k2 < 0) {
                    reject(r, RejectReason::kUnknownOrder, ts);
                    break;
                }
                const WorkingOrder old = xo_[i][static_cast<size_t>(k2)];
                OrderRequest n{old.client_id,
                               std::isnan(r.units) ? static_cast<double>(old.remaining_lots) * lot_[i] : r.units,
                               std::isnan(r.limit_px) ? old.limit_px : r.limit_px,
                               std::isnan(r.stop_px) ? old.stop_px : r.stop_px,
                               i,
                               static_cast<uint8_t>(RequestAction::kSubmit),
                               static_cast<uint8_t>(old.type),
                               static_cast<uint8_t>(old.tif),
                               0};
                const size_t before = xo_[i].size();
                submit(n, ts, old.client_id);
                if (xo_[i].size() > before) {
                    // Accepted: the old one goes when the replacement arrives, which then takes what is
                    // left of it (size NaN) or is refused if it filled on the way.
                    WorkingOrder& n_order = xo_[i].back();
                    n_order.replaces = old.id;
                    n_order.keep_size = std::isnan(r.units);
                    WorkingOrder& o = xo_[i][static_cast<size_t>(k2)];
                    o.cancel_ts = n_order.active_ts;
                    o.cancel_reason = static_cast<uint8_t>(CancelReason::kReplaced);
                }
                break;
            }
            case RequestAction::kCancelAll: {
                const int64_t at = ts + order_latency(i);
                for (auto& o : xo_[i])
                    if (o.cancel_ts == INT64_MAX) {
                        o.cancel_ts = at;
                        o.cancel_reason = static_cast<uint8_t>(CancelReason::kRequested);
                    }
                break;
            }
            default: reject(r, RejectReason::kBadRequest, ts);
        }
    }
}

// A new explicit order decided at ts (reuse_client_id: a replacement, allowed beside the order it replaces).
void Backtester::submit(const OrderRequest& r, int64_t ts, uint64_t reuse_client_id) {
    const uint32_t i = r.instrument;
    if (r.type > static_cast<uint8_t>(OrderType::kStopLimit) || r.tif > static_cast<uint8_t>(TimeInForce::kPostOnly)) {
        reject(r, RejectReason::kBadRequest, ts);
        return;
    }
    const auto type = static_cast<OrderType>(r.type);
    const bool needs_limit = type == OrderType::kLimit || type == OrderType::kStopLimit;
    const bool needs_stop = type == OrderType::kStop || type == OrderType::kStopLimit;
    if ((needs_limit && !(r.limit_px > 0.0 && std::isfinite(r.limit_px))) ||
        (needs_stop && !(r.stop_px > 0.0 && std::isfinite(r.stop_px)))) {
        reject(r, RejectReason::kBadPrice, ts);
        return;
    }
    const int64_t lots = std::isfinite(r.units) ? to_lots(r.units, lot_[i]) : 0;
    if (lots == 0) {
        reject(r, RejectReason::kSizeUnderLot, ts);
        return;
    }
    if (!tradeable(i, ts)) {
        reject(r, RejectReason::kNotTradeable, ts);
        return;
    }
    const int64_t pos = pos_lots_[i];
    const bool grows = std::llabs(pos + lots) > std::llabs(pos);
    if (grows && flattening(i, ts)) {  // the engine is taking the position flat for the close
        reject(r, RejectReason::kNotTradeable, ts);
        return;
    }
    if (grows && sess_[i].warm_left > 0) {
        reject(r, RejectReason::kWarmup, ts);
        return;
    }
    size_t live = 0;
    for (const auto& o : xo_[i]) live += o.cancel_ts == INT64_MAX && o.client_id != reuse_client_id;
    if (live >= static_cast<size_t>(kMaxWorkingOrders)) {
        reject(r, RejectReason::kTooManyOrders, ts);
        return;
    }
    WorkingOrder o;
    o.id = next_order_id_++;
    o.client_id = r.client_id;
    o.decision_ts = ts;
    o.active_ts = ts + order_latency(i);
    o.remaining_lots = lots;
    o.limit_px = needs_limit ? r.limit_px : kNaN;
    o.stop_px = needs_stop ? r.stop_px : kNaN;
    o.decision_mid = mark_[i];
    o.type = type;
    o.tif = type == OrderType::kLimit ? static_cast<TimeInForce>(r.tif) : TimeInForce::kGtc;
    xo_[i].push_back(o);
    ++c_.explicit_orders;
}

// ------------------------------------------------------------------------ strategies' callbacks

void Backtester::set_compiled_strategy(CompiledTickFn on_tick, CompiledEventFn on_event, void* user,
                                       std::vector<double> params, std::vector<double> state_init, size_t orders_cap) {
    if (on_tick == nullptr) throw std::invalid_argument("set_compiled_strategy: no on_tick function");
    if (orders_cap < 1) throw std::invalid_argument("set_compiled_strategy: the request buffer needs >= 1 entry");
    StrategyParams p;
    p.kind = StrategyKind::kCompiled;
    strat_.configure(p);
    cs_.on_tick = on_tick;
    cs_.on_event = on_event;
    cs_.user = user;
    cs_.params = std::move(params);
    cs_.state_init = std::move(state_init);
    cs_.state.clear();
    for (size_t i = 0; i < lot_.size(); ++i) cs_.state.insert(cs_.state.end(), cs_.state_init.begin(), cs_.state_init.end());
    cs_.orders.assign(orders_cap, OrderRequest{});
    compiled_ = true;
    events_on_ = on_event != nullptr;
}

void Backtester::set_host_buffers(OrderRequest* requests, size_t req_cap, StrategyEvent* events, size_t ev_cap,
                                  std::function<void(size_t)> on_events) {
    host_req_ = requests;
    host_req_cap_ = requests ? req_cap : 0;
    host_ev_ = events;
    host_ev_cap_ = events ? ev_cap : 0;
    on_host_events_ = std::move(on_events);
    events_on_ = host_ev_ != nullptr && host_ev_cap_ > 0 && static_cast<bool>(on_host_events_);
}

void Backtester::tick_row(BatchRow& b, const Quote& q, double pred_mid, double pred_std, bool reset, bool warming) const {
    b.ts = q.ts_recv;
    b.bid_px = q.bid_px;
    b.ask_px = q.ask_px;
    b.bid_sz = q.bid_sz;
    b.ask_sz = q.ask_sz;
    b.mid = mid_of(q);
    b.pred_mid = pred_mid;
    b.pred_std = pred_std;
    b.position = position_units(q.instrument);
    b.target = kNaN;
    b.instrument = q.instrument;
    b.reset = reset ? 1 : 0;
    b.warm = warming ? 0 : 1;
    b.pad[0] = b.pad[1] = 0;
}

double Backtester::compiled_decide(const Quote& q, double pred_mid, double pred_std, bool reset, bool warming) {
    BatchRow b;
    tick_row(b, q, pred_mid, pred_std, reset, warming);
    const int64_t n_state = static_cast<int64_t>(cs_.state_init.size());
    return cs_.on_tick(cs_.user, &b, cs_.params.data(), static_cast<int64_t>(cs_.params.size()), cs_.state.data(),
                       static_cast<int64_t>(lot_.size()), n_state, cs_.orders.data(),
                       static_cast<int64_t>(cs_.orders.size()));
}

// Requests read here only add events to the queue this loop is walking (they never dispatch).
void Backtester::dispatch_compiled_events() {
    const int64_t n_state = static_cast<int64_t>(cs_.state_init.size());
    for (size_t k = 0; k < events_.size(); ++k) {
        const StrategyEvent e = events_[k];  // a copy: compiled_requests may grow events_
        cs_.on_event(cs_.user, &e, cs_.params.data(), static_cast<int64_t>(cs_.params.size()), cs_.state.data(),
                     static_cast<int64_t>(lot_.size()), n_state, cs_.orders.data(), static_cast<int64_t>(cs_.orders.size()));
        compiled_requests(e.ts);
    }
    events_.clear();
}

void Backtester::drain_host_events() {
    size_t k = 0;
    while (k < events_.size()) {
        const size_t m = std::min(host_ev_cap_, events_.size() - k);
        std::copy(events_.begin() + static_cast<std::ptrdiff_t>(k), events_.begin() + static_cast<std::ptrdiff_t>(k + m), host_ev_);
        k += m;
        on_host_events_(m);
    }
    events_.clear();
}

// ------------------------------------------------------------------------ ssm_threshold's bracket

namespace {
constexpr uint64_t kBracketStop = UINT64_MAX - 1;
constexpr uint64_t kBracketTake = UINT64_MAX - 2;
}  // namespace

// The stop-loss and take-profit of ssm_threshold as orders, sized to the position and priced from
// the entry fill: a stop at entry * (1 - dir * stop_loss_bps) and a limit at entry * (1 + dir *
// take_profit_bps), placed with the order latency at the entry fill. The engine keeps them as a
// venue keeps a bracket: a fill of one cancels the other at once (OCO); a later fill of the entry
// order resizes them at once, and they go at once when the position is flat or turns. bracket()
// sees each fill; what changes the order list waits for bracket_update, before the tick's explicit
// orders are stepped.
void Backtester::bracket(uint32_t i, int64_t before_lots, double px, uint64_t client_id) {
    if (client_id == kBracketStop || client_id == kBracketTake) {
        for (auto& o : xo_[i])
            if (o.client_id == (client_id == kBracketStop ? kBracketTake : kBracketStop) && o.remaining_lots != 0) {
                o.cancel_ts = INT64_MIN;
                o.cancel_reason = static_cast<uint8_t>(CancelReason::kOco);
            }
        strat_.exited(i);
        return;
    }
    const int64_t pos = pos_lots_[i];
    if (pos != 0 && (before_lots == 0 || (before_lots > 0) != (pos > 0))) {  // a new entry
        entry_px_[i] = px;
        bracket_due_[i] = 2;
    } else if (bracket_due_[i] == 0) {
        bracket_due_[i] = 1;
    }
}

void Backtester::bracket_update(uint32_t i, int64_t ts) {
    const bool renew = bracket_due_[i] == 2;
    bracket_due_[i] = 0;
    const int64_t pos = pos_lots_[i];
    auto& v = xo_[i];
    for (auto& o : v) {
        if (o.client_id != kBracketStop && o.client_id != kBracketTake) continue;
        if (pos != 0 && !renew) {
            o.remaining_lots = -pos;
        } else {
            emit_cancel(i, o, CancelReason::kRequested, ts);
            o.remaining_lots = 0;
        }
    }
    v.erase(std::remove_if(v.begin(), v.end(), [](const WorkingOrder& o) { return o.remaining_lots == 0; }), v.end());
    if (pos == 0 || !renew) return;
    const double px = entry_px_[i];
    const double dir = pos > 0 ? 1.0 : -1.0;
    const StrategyParams& p = strat_.params();
    const double units = -static_cast<double>(pos) * lot_[i];
    const auto req = [&](uint64_t id, OrderType type, double limit_px, double stop_px) {
        return OrderRequest{id, units, limit_px, stop_px, i, static_cast<uint8_t>(RequestAction::kSubmit),
                            static_cast<uint8_t>(type), static_cast<uint8_t>(TimeInForce::kGtc), 0};
    };
    if (p.stop_loss_bps > 0) submit(req(kBracketStop, OrderType::kStop, kNaN, px * (1.0 - dir * p.stop_loss_bps * 1e-4)), ts, 0);
    if (p.take_profit_bps > 0)
        submit(req(kBracketTake, OrderType::kLimit, px * (1.0 + dir * p.take_profit_bps * 1e-4), kNaN), ts, 0);
}

void Backtester::set_rebalance_ns(int64_t period_ns) {
    if (period_ns < 0) throw std::invalid_argument("rebalance_ns must be >= 0 (0: every tick batch)");
    rebalance_ns_ = period_ns;
    next_rebalance_ns_ = INT64_MIN;
}

// A quote with one side missing (price 0, size 0) has no mid: it moves sessions, resets and fills
// (against the side that is there) but neither the marks, the features, the model nor the strategy.
// A reset it carries takes effect there and reaches the state at the next two-sided tick.
void Backtester::one_sided_tick(const Quote& q) { end_tick(q, kNaN); }

void Backtester::run_builtin(const Quote* q, size_t n) {
    if (strat_.params().kind == StrategyKind::kPython)
        throw std::logic_error("run_builtin called with a Python strategy configured");
    check_rows(q, n);
    if (sig_.model || tap_on_ || stamping_) {
        run_grouped(q, n);
        return;
    }
    for (size_t r = 0; r < n; ++r) {
        bool reset = false;
        const bool in = begin_tick(q[r], reset);
        if (compiled_ && !events_.empty()) dispatch_compiled_events();
        if (!in) continue;
        if (!two_sided(q[r])) {
            one_sided_tick(q[r]);
            continue;
        }
        const bool warming = sess_[q[r].instrument].warm_left > 0;
        if (compiled_) {
            end_tick(q[r], compiled_decide(q[r], kNaN, kNaN, reset, warming));
            compiled_requests(q[r].ts_recv);
            if (!events_.empty()) dispatch_compiled_events();
        } else {
            end_tick(q[r], strat_.decide(q[r].instrument, q[r].bid_px, q[r].ask_px, kNaN, kNaN, reset, warming));
        }
    }
}

// The instruments ticking at one timestamp go through one batched SSM step (the kernel shares each
// weight pass across rows). Rows are independent in the kernel, a strategy's decision reads only its
// own instrument, and instruments interact only through cash, so this gives exactly the row-by-row
// results.
void Backtester::run_grouped(const Quote* q, size_t n) {
    const size_t cap = n_instruments();
    if (batch_rows_.size() < cap) batch_rows_.resize(cap);
    if (row_reset_.size() < cap) {
        row_reset_.resize(cap);
        pred_.resize(cap);
        pred_std_.resize(cap);
        target_.resize(cap);
    }
    size_t r = 0;
    while (r < n) {
        const int64_t ts = q[r].ts_recv;
        size_t nb = 0, e = r;
        while (e < n && q[e].ts_recv == ts && !in_batch_[q[e].instrument]) {
            in_batch_[q[e].instrument] = 1;
            bool reset = false;
            const bool in = begin_tick(q[e], reset);
            if (compiled_ && !events_.empty()) dispatch_compiled_events();
            if (in) {
                if (two_sided(q[e])) {
                    batch_rows_[nb] = e;
                    row_reset_[nb++] = reset ? 1 : 0;
                } else {
                    one_sided_tick(q[e]);
                }
            }
            ++e;
        }
        for (size_t k = r; k < e; ++k) in_batch_[q[k].instrument] = 0;
        if (stamping_) stamps_.state_ns = mono_ns();
        if (nb) signal(q, batch_rows_.data(), row_reset_.data(), nb, pred_.data(), pred_std_.data());
        if (stamping_) stamps_.signal_ns = mono_ns();
        if (compiled_) {
            // Each row's requests are read right after its target, as in run_builtin's row loop.
            for (size_t k = 0; k < nb; ++k) {
                const Quote& x = q[batch_rows_[k]];
                const bool warming = sess_[x.instrument].warm_left > 0;
                end_tick(x, compiled_decide(x, pred_[k], pred_std_[k], row_reset_[k] != 0, warming));
                compiled_requests(x.ts_recv);
                if (!events_.empty()) dispatch_compiled_events();
            }
        } else {
            for (size_t k = 0; k < nb; ++k) {
                const Quote& x = q[batch_rows_[k]];
                const bool warming = sess_[x.instrument].warm_left > 0;
                target_[k] = strat_.decide(x.instrument, x.bid_px, x.ask_px, pred_[k], pred_std_[k], row_reset_[k] != 0, warming);
            }
        }
        if (stamping_) stamps_.decision_ns = mono_ns();
        if (!compiled_)
            for (size_t k = 0; k < nb; ++k) end_tick(q[batch_rows_[k]], target_[k]);
        if (stamping_) {
            stamps_.order_ns = mono_ns();
            ++stamps_.batches;
        }
        r = e;
    }
}

size_t Backtester::next_batch(const Quote* q, size_t n, size_t r, BatchRow* buf, size_t cap, size_t& nb) {
    const int64_t ts = q[r].ts_recv;
    size_t e = r;
    nb = 0;
    while (e < n && q[e].ts_recv == ts && !in_batch_[q[e].instrument] && nb < cap) {
        const Quote& x = q[e];
        in_batch_[x.instrument] = 1;
        bool reset = false;
        const bool in_session = begin_tick(x, reset);
        if (in_session && !two_sided(x)) {
            one_sided_tick(x);
        } else if (in_session) {
            tick_row(buf[nb], x, kNaN, kNaN, reset, sess_[x.instrument].warm_left > 0);
            batch_rows_[nb++] = e;
        }
        ++e;
    }
    for (size_t k = r; k < e; ++k) in_batch_[q[k].instrument] = 0;
    if (stamping_) stamps_.state_ns = mono_ns();
    if (nb && (sig_.model || tap_on_)) {
        if (row_reset_.size() < nb) {
            row_reset_.resize(nb);
            pred_.resize(nb);
            pred_std_.resize(nb);
        }
        for (size_t k = 0; k < nb; ++k) row_reset_[k] = buf[k].reset;
        signal(q, batch_rows_.data(), row_reset_.data(), nb, pred_.data(), pred_std_.data());
        for (size_t k = 0; k < nb; ++k) {
            buf[k].pred_mid = pred_[k];
            buf[k].pred_std = pred_std_[k];
        }
    }
    if (stamping_) stamps_.signal_ns = mono_ns();
    return e;
}

void Backtester::run_batched(const Quote* q, size_t n, BatchRow* buf, size_t cap,
                             const std::function<void(size_t)>& on_batch) {
    if (cap < 1) throw std::invalid_argument("batch buffer capacity must be >= 1");
    check_rows(q, n);
    batch_rows_.resize(cap);
    size_t r = 0;
    while (r < n) {
        size_t nb = 0;
        const size_t e = next_batch(q, n, r, buf, cap, nb);
        if (nb && !events_.empty()) drain_host_events();
        if (nb) on_batch(nb);
        if (stamping_) stamps_.decision_ns = mono_ns();
        for (size_t k = 0; k < nb; ++k) end_tick(q[batch_rows_[k]], buf[k].target);
        if (host_req_cap_ && host_req_[0].action != 0) process_requests(host_req_, host_req_cap_, q[r].ts_recv);
        if (stamping_) {
            stamps_.order_ns = mono_ns();
            ++stamps_.batches;
        }
        r = e;
    }
}

void Backtester::run_portfolio(const Quote* q, size_t n, BatchRow* buf, size_t cap, BookRow* book,
                               const double* targets, size_t n_book,
                               const std::function<int(size_t, int64_t, double, double)>& on_rebalance) {
    if (cap < 1) throw std::invalid_argument("batch buffer capacity must be >= 1");
    const size_t n_inst = n_instruments();
    if (n_book < n_inst)
        throw std::invalid_argument("the book has " + std::to_string(n_book) + " rows for " + std::to_string(n_inst) +
                                    " instruments");
    check_rows(q, n);
    batch_rows_.resize(cap);
    size_t r = 0;
    while (r < n) {
        const int64_t ts = q[r].ts_recv;
        size_t nb = 0;
        const size_t e = next_batch(q, n, r, buf, cap, nb);
        for (size_t k = 0; k < nb; ++k) {
            const BatchRow& b = buf[k];
            BookRow& x = book[b.instrument];
            x.ts = b.ts;
            x.bid_px = b.bid_px;
            x.ask_px = b.ask_px;
            x.bid_sz = b.bid_sz;
            x.ask_sz = b.ask_sz;
            x.pred_mid = b.pred_mid;
        }
        // Every batch counts for the clock, even one whose ticks were all outside their sessions:
        // other instruments may be trading, and the documented rule is "the first batch at or after".
        if (rebalance_ns_ == 0 || ts >= next_rebalance_ns_) {
            if (rebalance_ns_ > 0) next_rebalance_ns_ = (floor_div(ts, rebalance_ns_) + 1) * rebalance_ns_;
            for (uint32_t i = 0; i < n_inst; ++i) {
                BookRow& x = book[i];
                const bool ok = tradeable(i, ts);
                x.mid = mark_[i] > 0.0 ? mark_[i] : kNaN;
                x.position = position_units(i);
                x.working = static_cast<double>(order_[i].remaining_lots) * lot_[i];
                x.instrument = i;
                x.in_session = in_session(i, ts) ? 1 : 0;
                x.tradeable = ok ? 1 : 0;
                x.warm = ok && sess_[i].warm_left == 0 ? 1 : 0;
            }
            ++c_.rebalances;
            if (!events_.empty()) drain_host_events();
            const int kind = on_rebalance(nb, ts, cash_, equity());
            if (kind != static_cast<int>(TargetKind::kNone)) {
                if (kind != static_cast<int>(TargetKind::kUnits) && kind != static_cast<int>(TargetKind::kWeights))
                    throw std::invalid_argument("on_rebalance returned target kind " + std::to_string(kind) +
                                                "; 0 none, 1 units, 2 weights");
                place_targets(targets, n_inst, static_cast<TargetKind>(kind), ts);
            }
            if (host_req_cap_ && host_req_[0].action != 0) process_requests(host_req_, host_req_cap_, ts);
        }
        if (stamping_) stamps_.decision_ns = mono_ns();
        // Decided above with the rest; here the ticking rows' warm-up advances and flatten-at-close
        // applies, as on any tick.
        for (size_t k = 0; k < nb; ++k) end_tick(q[batch_rows_[k]], kNaN);
        if (stamping_) {
            stamps_.order_ns = mono_ns();
            ++stamps_.batches;
        }
        r = e;
    }
}

void Backtester::finish() {
    for (uint32_t i = 0; i < order_.size(); ++i) {
        if (order_[i].working()) cancel(i, c_.cancelled_end, OrderEventKind::kEnd, last_ts_);
        cancel_all_explicit(i, CancelReason::kEnd, last_ts_);
    }
    if (compiled_ && !events_.empty()) dispatch_compiled_events();
    // A compiled strategy may have answered with requests; the run is over, so they are refused.
    if (compiled_) for (auto& r : cs_.orders) r.action = 0;
    if (!compiled_ && !events_.empty() && on_host_events_) drain_host_events();
    if (last_ts_ == INT64_MIN) return;
    if (!eq_ts_.empty() && eq_ts_.back() == last_ts_) {
        eq_val_.back() = equity();
        eq_gross_.back() = gross_exposure();
    } else {
        eq_ts_.push_back(last_ts_);
        eq_val_.push_back(equity());
        eq_gross_.push_back(gross_exposure());
    }
}

}  // namespace nextick
