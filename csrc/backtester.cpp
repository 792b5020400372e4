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
    const double lot = lot_[i];
    int64_t lots = o.remaining_lots;
    if (cfg_.exec.size_cap) {
        const double shown = buy ? q.ask_sz : q.bid_sz;
        const int64_t avail = shown > 0 ? static_cast<int64_t>(std::floor(shown / lot + 1e-9)) : 0;
        lots = buy ? std::min(lots, avail) : std::max(lots, -avail);
    }
    if (lots != 0) {
        const double notional = std::fabs(static_cast<double>(lots)) * lot * px;
        const double fee = notional * cfg_.exec.fee_bps * 1e-4 + cfg_.exec.fee_per_fill;
        const double side = buy ? 1.0 : -1.0;
        book_fill(i, lots, px, fee, q.ts_recv);
        fills_.push_back(Fill{o.id, o.decision_ts, q.ts_recv, px, static_cast<double>(lots) * lot, fee,
                              o.decision_mid, slippage_bps(side, px, o.decision_mid), i, 0});
        o.remaining_lots -= lots;
    }
    if (o.remaining_lots != 0 && cfg_.exec.cancel_remainder) cancel(i, c_.cancelled_remainder, OrderEventKind::kRemainder, q.ts_recv);
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
        if (cfg_.exec.flatten_at_close && pos_lots_[i] != 0) ++c_.flatten_missed;
        s.close_ns = -1;
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
        if (order_[i].working()) cancel(i, c_.cancelled_reset, OrderEventKind::kReset, ts);
    }
    if (order_[i].working() && ts > order_[i].active_ts) fill(i, q);
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
    if (cfg_.exec.flatten_at_close && ts >= s.close_ns - cfg_.exec.flatten_lead_ns) target_units = 0.0;
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
    o.active_ts = ts + cfg_.exec.latency_ns;
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
        if (!begin_tick(q[r], reset)) continue;
        if (!two_sided(q[r])) {
            one_sided_tick(q[r]);
            continue;
        }
        const bool warming = sess_[q[r].instrument].warm_left > 0;
        end_tick(q[r], strat_.decide(q[r].instrument, q[r].bid_px, q[r].ask_px, kNaN, kNaN, reset, warming));
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
            if (begin_tick(q[e], reset)) {
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
        for (size_t k = 0; k < nb; ++k) {
            const Quote& x = q[batch_rows_[k]];
            const bool warming = sess_[x.instrument].warm_left > 0;
            target_[k] = strat_.decide(x.instrument, x.bid_px, x.ask_px, pred_[k], pred_std_[k], row_reset_[k] != 0, warming);
        }
        if (stamping_) stamps_.decision_ns = mono_ns();
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
            BatchRow& b = buf[nb];
            b.ts = ts;
            b.bid_px = x.bid_px;
            b.ask_px = x.ask_px;
            b.bid_sz = x.bid_sz;
            b.ask_sz = x.ask_sz;
            b.mid = mid_of(x);
            b.pred_mid = kNaN;
            b.pred_std = kNaN;
            b.position = position_units(x.instrument);
            b.target = kNaN;
            b.instrument = x.instrument;
            b.reset = reset ? 1 : 0;
            b.warm = sess_[x.instrument].warm_left > 0 ? 0 : 1;
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
        if (nb) on_batch(nb);
        if (stamping_) stamps_.decision_ns = mono_ns();
        for (size_t k = 0; k < nb; ++k) end_tick(q[batch_rows_[k]], buf[k].target);
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
            const int kind = on_rebalance(nb, ts, cash_, equity());
            if (kind != static_cast<int>(TargetKind::kNone)) {
                if (kind != static_cast<int>(TargetKind::kUnits) && kind != static_cast<int>(TargetKind::kWeights))
                    throw std::invalid_argument("on_rebalance returned target kind " + std::to_string(kind) +
                                                "; 0 none, 1 units, 2 weights");
                place_targets(targets, n_inst, static_cast<TargetKind>(kind), ts);
            }
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
    for (uint32_t i = 0; i < order_.size(); ++i)
        if (order_[i].working()) cancel(i, c_.cancelled_end, OrderEventKind::kEnd, last_ts_);
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
