// The model-backend seam: what the tick loop needs from a signal model, and nothing more. The engine
// (backtester.hpp's SignalModel) holds a ModelBackend; the C++ SSM kernel (ssm.hpp's SsmModel) is
// the first implementation, and others (ONNX Runtime, CUDA, TensorRT, or a Python class through
// the binding's trampoline) plug in behind the same calls with the same slot semantics, so a
// strategy cannot tell which one ran except by speed.
//
// Slot semantics, the same for every backend:
//   * one slot of recurrent state per instrument, zero at creation;
//   * step() runs rows in order, each independently; a row's reset flag zeroes its slot's state
//     before the row; a row with slot < 0 is padding: its out row is NaN and no state changes;
//     a slot >= n_slots() throws std::out_of_range before anything is written;
//   * a row's output depends only on its slot's state, its features and the weights: never on the
//     batch size or the other rows;
//   * the whole state of a slot reads and writes as state_size() floats (get_state / set_state):
//     a slot restored from get_state() continues exactly as the original would.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace nextick {

class ModelBackend {
public:
    virtual ~ModelBackend() = default;

    virtual std::string backend_name() const = 0;  // "cpu", "onnxruntime", "cuda", ...
    virtual int n_features() const = 0;
    virtual int n_outputs() const = 0;
    virtual int n_slots() const = 0;

    // x is [n_rows, n_features()] and out [n_rows, n_outputs()], row-major; reset may be null.
    virtual void step(int n_rows, const int32_t* slots, const float* x, const uint8_t* reset, float* out) = 0;
    virtual void reset_slot(int slot) = 0;  // std::out_of_range unless 0 <= slot < n_slots()
    virtual void reset_all() = 0;
    // At least n_slots slots: existing slots keep their states, added ones start at zero.
    virtual void grow(int n_slots) = 0;
    // Exactly n_slots slots, all zero.
    virtual void resize(int n_slots) = 0;

    // Floats in one slot's whole recurrent state, and the state itself in a backend-defined order.
    virtual size_t state_size() const = 0;
    virtual void get_state(int slot, float* dst) const = 0;
    virtual void set_state(int slot, const float* src) = 0;
};

}  // namespace nextick
