// A model's predictions recorded once and replayed into many backtests of the same data.
//
// The engine steps its model on the same rows in the same calls whatever the strategy does: which
// ticks reach the signal depends on the data, the conflation interval, sessions, gaps and manual
// resets, never on orders. So a sweep of strategy configurations over one data set needs the model
// stepped once: RecordingBackend wraps the real backend for one run and keeps every call's slots
// and outputs (the tape); ReplayBackend then hands those outputs back call by call, bit for bit,
// with no model arithmetic. A replay checks each call against the tape (same row count, same slots)
// and throws on the first difference, so a tape replayed on other data or another interval fails
// loudly instead of feeding a misaligned signal.
//
// MC dropout: a tape recorded with V variants per instrument (slot = instrument * V + v, V rows per
// instrument per call) replays either whole (variant = -1: the run also steps V rows and strategies
// see mean and std) or one variant v alone (the run steps 1 row per instrument and gets row
// k * V + v of the recorded call): one kernel pass over every variant feeds every variant's backtest.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "model_backend.hpp"

namespace nextick {

struct PredictionTape {
    int n_features = 0, n_outputs = 0;
    std::vector<int64_t> counts;   // rows of each call
    std::vector<int64_t> offsets;  // first row of each call
    std::vector<int32_t> slots;    // [rows]
    std::vector<float> out;        // [rows][n_outputs]
};

class RecordingBackend final : public ModelBackend {
public:
    explicit RecordingBackend(std::shared_ptr<ModelBackend> inner) : inner_(std::move(inner)) {
        tape_ = std::make_shared<PredictionTape>();
        tape_->n_features = inner_->n_features();
        tape_->n_outputs = inner_->n_outputs();
    }
    std::string backend_name() const override { return "recording(" + inner_->backend_name() + ")"; }
    int n_features() const override { return inner_->n_features(); }
    int n_outputs() const override { return inner_->n_outputs(); }
    int n_slots() const override { return inner_->n_slots(); }
    void step(int n_rows, const int32_t* slots, const float* x, const uint8_t* reset, float* out) override {
        inner_->step(n_rows, slots, x, reset, out);
        PredictionTape& t = *tape_;
        t.offsets.push_back(static_cast<int64_t>(t.slots.size()));
        t.counts.push_back(n_rows);
        t.slots.insert(t.slots.end(), slots, slots + n_rows);
        t.out.insert(t.out.end(), out, out + static_cast<size_t>(n_rows) * t.n_outputs);
    }
    void reset_slot(int slot) override { inner_->reset_slot(slot); }
    void reset_all() override { inner_->reset_all(); }
    void grow(int n_slots) override { inner_->grow(n_slots); }
    // The engine resizes once as a run starts: a fresh run starts a fresh tape.
    void resize(int n_slots) override {
        inner_->resize(n_slots);
        const int f = tape_->n_features, o = tape_->n_outputs;
        tape_ = std::make_shared<PredictionTape>();
        tape_->n_features = f;
        tape_->n_outputs = o;
    }
    size_t state_size() const override { return inner_->state_size(); }
    void get_state(int slot, float* dst) const override { inner_->get_state(slot, dst); }
    void set_state(int slot, const float* src) override { inner_->set_state(slot, src); }

    std::shared_ptr<const PredictionTape> tape() const { return tape_; }

private:
    std::shared_ptr<ModelBackend> inner_;
    std::shared_ptr<PredictionTape> tape_;
};

class ReplayBackend final : public ModelBackend {
public:
    // variants: rows per instrument in the recording; variant: the one replayed, or -1 for all.
    ReplayBackend(std::shared_ptr<const PredictionTape> tape, int variants, int variant)
        : tape_(std::move(tape)), variants_(variants), variant_(variant) {
        if (variants < 1) throw std::invalid_argument("ReplayBackend: variants must be >= 1");
        if (variant < -1 || variant >= variants)
            throw std::invalid_argument("ReplayBackend: variant " + std::to_string(variant) + " not in [-1, " +
                                        std::to_string(variants) + ")");
    }
    std::string backend_name() const override { return "replay"; }
    int n_features() const override { return tape_->n_features; }
    int n_outputs() const override { return tape_->n_outputs; }
    int n_slots() const override { return n_slots_; }
    void step(int n_rows, const int32_t* slots, const float*, const uint8_t*, float* out) override {
        const PredictionTape& t = *tape_;
        if (call_ >= t.counts.size())
            throw std::runtime_error("ReplayBackend: this run steps the model more often than the recorded run (" +
                                     std::to_string(t.counts.size()) + " calls): replay a tape on the data, interval "
                                     "and resets it was recorded on");
        const int64_t rec_n = t.counts[call_], at = t.offsets[call_];
        const int64_t stride = variant_ < 0 ? 1 : variants_;
        const int64_t shift = variant_ < 0 ? 0 : variant_;
        if (rec_n != static_cast<int64_t>(n_rows) * stride) mismatch("its call has " + std::to_string(rec_n) + " rows");
        const int o = t.n_outputs;
        for (int k = 0; k < n_rows; ++k) {
            const int64_t r = at + k * stride + shift;
            const int64_t want = variant_ < 0 ? slots[k] : static_cast<int64_t>(slots[k]) * variants_ + variant_;
            if (t.slots[r] != want) mismatch("row " + std::to_string(k) + " is slot " + std::to_string(t.slots[r]));
            for (int j = 0; j < o; ++j) out[static_cast<size_t>(k) * o + j] = t.out[static_cast<size_t>(r) * o + j];
        }
        ++call_;
    }
    void reset_slot(int) override {}
    void reset_all() override {}
    void grow(int n_slots) override { n_slots_ = std::max(n_slots_, n_slots); }
    void resize(int n_slots) override {  // a run starts: replay from the first call
        n_slots_ = n_slots;
        call_ = 0;
    }
    size_t state_size() const override { return 0; }
    void get_state(int, float*) const override {}
    void set_state(int, const float*) override {}

    size_t calls_replayed() const { return call_; }
    size_t calls_recorded() const { return tape_->counts.size(); }

private:
    [[noreturn]] void mismatch(const std::string& what) const {
        throw std::runtime_error("ReplayBackend: call " + std::to_string(call_) + " differs from the recording (" + what +
                                 "): replay a tape on the data, interval and resets it was recorded on");
    }
    std::shared_ptr<const PredictionTape> tape_;
    int variants_, variant_;
    int n_slots_ = 0;
    size_t call_ = 0;
};

}  // namespace nextick
