// Built-in strategies. Each maps one in-session tick of one instrument to a target position in
// units (NaN = no opinion, keep whatever is working). Per-instrument state lives in flat arrays
// sized once by resize(); nothing allocates per tick.
//
// Sizing: when a strategy takes a new direction it sizes the position as notional / mid and keeps
// that size until the direction changes, so a standing signal does not churn small rebalances.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace nextick {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// One tick as a strategy sees it: a row of a Python strategy's batch, the record a compiled strategy
// gets. Layout mirrors strategies.base.BATCH_DTYPE.
struct BatchRow {
    int64_t ts;
    double bid_px, ask_px, bid_sz, ask_sz, mid;
    double pred_mid;      // the SSM's expected mid K ticks ahead; NaN without a model
    double pred_std;      // MC dropout: std of pred_mid across the model's variants; 0 with one
    double position;      // units held now
    double target;        // out: target units; NaN = keep
    uint32_t instrument;
    uint8_t reset;        // 1 if state was reset at this tick
    uint8_t warm;         // 1 if warm-up is over (the strategy may open positions)
    uint8_t pad[2];
};
static_assert(sizeof(BatchRow) == 88, "BatchRow must match BATCH_DTYPE");

enum class StrategyKind : uint8_t {
    kBuyHold = 0, kMomentum = 1, kMeanReversion = 2, kPython = 3, kSsmThreshold = 4, kNone = 5,
    kCompiled = 6,  // a compiled strategy (csrc/orders.hpp CompiledTickFn) decides per tick
};

// The built-in strategies' parameters, each spelled once, here: X(name, default, doc). They make
// StrategyParams's fields and kStrategyParams, the table the binding maps a {name: value} dict
// through and exposes as engine._core.STRATEGY_PARAMS, from which strategies.builtin builds
// BuiltinSpec and its validation. A new parameter is one line here.
//
// threshold_bps: 3 bps was chosen for the packaged model on a synthetic market disjoint from its
// training data and from the demo (README, Default model).
#define NEXTICK_STRATEGY_PARAMS(X)                                                                        \
    X(notional, kNaN, "currency per instrument at entry; default: the initial capital split evenly")     \
    X(fast_span, 120.0, "momentum: fast EMA span, ticks")                                                \
    X(slow_span, 480.0, "momentum: slow EMA span, ticks")                                                \
    X(span, 100.0, "mean_reversion: EMA span of the mid and of its variance, ticks")                     \
    X(entry_z, 2.0, "mean_reversion: enter against a move beyond this z-score")                          \
    X(exit_z, 0.5, "mean_reversion: go flat under this |z|")                                             \
    X(threshold_bps, 3.0, "ssm_threshold: predicted mid beyond the ask (bid) by this much to buy (sell)") \
    X(stop_loss_bps, 0.0, "ssm_threshold: a stop order this far against the entry fill's price; 0 = off")     \
    X(take_profit_bps, 0.0, "ssm_threshold: a limit order this far in favour of the entry fill's price; 0 = off")\
    X(max_units, 0.0, "ssm_threshold: cap on |position| in units; 0 = notional / mid only")              \
    X(hold_ticks, 0.0, "ssm_threshold: exit after this many ticks without a fresh signal; 0 = off")        \
    X(uncertainty_k, 0.0, "ssm_threshold: MC dropout gate: the prediction less k pred_std must clear the touch")

struct StrategyParams {
    StrategyKind kind = StrategyKind::kMomentum;
#define NEXTICK_PARAM_MEMBER(name, value, doc) double name = value;
    NEXTICK_STRATEGY_PARAMS(NEXTICK_PARAM_MEMBER)
#undef NEXTICK_PARAM_MEMBER
};

struct StrategyParamInfo {
    const char* name;
    double StrategyParams::*field;
    double default_value;
    const char* doc;
};

inline constexpr StrategyParamInfo kStrategyParams[] = {
#define NEXTICK_PARAM_INFO(name, value, doc) {#name, &StrategyParams::name, value, doc},
    NEXTICK_STRATEGY_PARAMS(NEXTICK_PARAM_INFO)
#undef NEXTICK_PARAM_INFO
};

class BuiltinStrategy {
public:
    void configure(const StrategyParams& p) {
        p_ = p;
        a_fast_ = 2.0 / (p.fast_span + 1.0);
        a_slow_ = 2.0 / (p.slow_span + 1.0);
        a_mr_ = 2.0 / (p.span + 1.0);
    }
    void resize(size_t n) {
        ema_a_.resize(n, 0.0);
        ema_b_.resize(n, 0.0);
        dir_.resize(n, 0);
        target_.resize(n, kNaN);
        held_.resize(n, 0);
        blocked_.resize(n, 0);
    }
    const StrategyParams& params() const { return p_; }

    // ssm_threshold: a stop-loss or take-profit order filled. The trade is over; the strategy keeps
    // whatever the exit order is still doing (NaN target) and waits for its signal to lapse.
    void exited(uint32_t i) {
        if (dir_[i] != 0) blocked_[i] = dir_[i];
        dir_[i] = 0;
        target_[i] = kNaN;
    }

    // `reset`: this tick starts fresh state (session open, gap, reconnect...). `warming`: still in
    // the warm-up after a reset; features update but no direction is taken, so the first position
    // after warm-up comes from a signal on warmed-up features, not one latched during warm-up.
    // `pred_mid`: the SSM's expected mid K ticks ahead (NaN without a model); `pred_std`: its spread
    // across MC-dropout variants (0 with one).
    inline double decide(uint32_t i, double bid, double ask, double pred_mid, double pred_std, bool reset,
                         bool warming) {
        const double mid = 0.5 * (bid + ask);
        switch (p_.kind) {
            case StrategyKind::kSsmThreshold: return ssm_threshold(i, bid, ask, mid, pred_mid, pred_std, reset, warming);
            case StrategyKind::kMomentum: return momentum(i, mid, reset, warming);
            case StrategyKind::kMeanReversion: return mean_reversion(i, mid, reset, warming);
            case StrategyKind::kBuyHold: return warming ? kNaN : buy_hold(i, mid);
            default: return kNaN;
        }
    }

private:
    inline double size_units(double mid) const { return std::floor(p_.notional / mid); }

    // Fast/slow EMA cross of the mid: long while fast > slow, short while fast < slow; the target
    // flips only on a cross.
    inline double momentum(uint32_t i, double mid, bool reset, bool warming) {
        double& fast = ema_a_[i];
        double& slow = ema_b_[i];
        if (reset) {
            fast = slow = mid;
            dir_[i] = 0;
            return kNaN;
        }
        fast += a_fast_ * (mid - fast);
        slow += a_slow_ * (mid - slow);
        if (warming) return kNaN;
        const int8_t d = fast > slow ? 1 : (fast < slow ? -1 : 0);
        if (d != 0 && d != dir_[i]) {
            dir_[i] = d;
            target_[i] = d * size_units(mid);
        }
        return dir_[i] == 0 ? kNaN : target_[i];
    }

    // z-score of mid against its EMA, with an exponentially weighted variance: enter against a
    // move beyond entry_z, go flat once |z| falls under exit_z.
    inline double mean_reversion(uint32_t i, double mid, bool reset, bool warming) {
        double& mean = ema_a_[i];
        double& var = ema_b_[i];
        if (reset) {
            mean = mid;
            var = 0.0;
            dir_[i] = 0;
            return kNaN;
        }
        const double diff = mid - mean;
        const double incr = a_mr_ * diff;
        mean += incr;
        var = (1.0 - a_mr_) * (var + diff * incr);
        if (warming || !(var > 0.0)) return kNaN;
        const double z = (mid - mean) / std::sqrt(var);
        int8_t want = dir_[i];
        if (z > p_.entry_z) want = -1;
        else if (z < -p_.entry_z) want = 1;
        else if (std::fabs(z) < p_.exit_z) want = 0;
        if (want != dir_[i]) {
            dir_[i] = want;
            target_[i] = want * size_units(mid);
        }
        return dir_[i] == 0 ? 0.0 : target_[i];
    }

    // Trade the SSM's predicted mid against the touch, the rule of published studies of model
    // signals on 1 s NBBO / 100 ms BBO with next-tick fills: long when the prediction clears the
    // ask by threshold_bps, short when it is under the bid by threshold_bps; otherwise hold. The
    // stop-loss and take-profit are real orders the engine keeps around the position (a stop and a
    // limit from the entry fill's price: Backtester::bracket); the holding limit is a target of 0.
    // After an exit the same direction is not re-entered until its signal has lapsed once, so a
    // stale prediction cannot buy straight back into a stopped-out trade. A reset forgets the trade (its
    // entry belongs to discarded state): the strategy answers "keep" until its next signal, so a
    // position carried through a reset is neither dumped nor managed by stale exits.
    // With MC dropout the signal is gated by the model's own uncertainty: the prediction must clear
    // the touch by the threshold even after moving uncertainty_k standard deviations (across the
    // variants) towards the mid; k = 0, or one variant, is the plain rule.
    inline double ssm_threshold(uint32_t i, double bid, double ask, double mid, double pred, double pred_std,
                                bool reset, bool warming) {
        if (reset) {
            dir_[i] = 0;
            blocked_[i] = 0;
            target_[i] = kNaN;
        }
        int8_t signal = 0;
        const double margin = p_.uncertainty_k > 0 ? p_.uncertainty_k * pred_std : 0.0;
        if (pred - margin > ask * (1.0 + p_.threshold_bps * 1e-4)) signal = 1;
        else if (pred + margin < bid * (1.0 - p_.threshold_bps * 1e-4)) signal = -1;  // NaN: neither
        if (signal != blocked_[i]) blocked_[i] = 0;

        int8_t& dir = dir_[i];
        if (dir != 0) {
            ++held_[i];
            if (p_.hold_ticks > 0 && held_[i] >= p_.hold_ticks && signal != dir) {
                blocked_[i] = dir;
                dir = 0;
                target_[i] = 0.0;
                return 0.0;
            }
            if (signal == dir) held_[i] = 0;  // a fresh signal renews the holding period
        }
        if (!warming && signal != 0 && signal != dir && signal != blocked_[i]) {
            dir = signal;
            held_[i] = 0;
            double units = size_units(mid);
            if (p_.max_units > 0) units = std::fmin(units, p_.max_units);
            target_[i] = dir * units;
        }
        return target_[i];  // NaN until the first signal after a reset or a bracket exit, 0 after a holding-limit exit
    }

    inline double buy_hold(uint32_t i, double mid) {
        if (std::isnan(target_[i])) target_[i] = size_units(mid);
        return target_[i];
    }

    StrategyParams p_;
    double a_fast_ = 0, a_slow_ = 0, a_mr_ = 0;
    std::vector<double> ema_a_, ema_b_, target_;
    std::vector<int8_t> dir_, blocked_;
    std::vector<int64_t> held_;
};

}  // namespace nextick
