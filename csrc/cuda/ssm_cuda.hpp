// The SSM step on an NVIDIA GPU: a ModelBackend (model_backend.hpp) built from the same config and
// tensors as SsmModel, with the same slot semantics. Free of CUDA headers so that the binding
// (bind_cuda.cpp, compiled by the C++ compiler) can include it; ssm_cuda.cu implements it.
//
// On the device: the weight arena (SsmModel's, copied once), a slot-major state pool (each slot
// state_size floats in get_state's order, so get_state/set_state copy one contiguous slot and
// never a tick's states), and per batch bucket (ssm_cuda_host.hpp: 1, 16, 256, 1024, then
// multiples of 1024 rows) a CUDA graph of the one kernel launch of a step. A step copies its rows
// into mapped pinned host memory, replays the bucket's graph (the kernel reads the rows and writes
// the predictions through the bus, so there are no copy nodes to wait for), waits, and copies the
// predictions out. A batch that repeats a slot runs in waves, one graph replay each.
//
// Precision. "fp32" computes the CPU kernel's bits (ssm_cuda_step.hpp says how). "fp16" stores the
// matrices (encoder, in_proj, out_proj, head: 96% of the default model's weights) in binary16 and
// does everything else as fp32 does: activations, accumulation and the states stay fp32, so the
// result is the CPU kernel's bits on the matrices rounded to binary16, and the difference from fp32
// is that rounding's effect alone (tests/test_cuda.py states the tolerance and how it was measured).
// The states stay fp32 because the recurrence carries their rounding forward: a head decaying
// by 0.99 a step would accumulate binary16's 2^-11 relative error into ~5%.
#pragma once
#include <memory>
#include <mutex>
#include <string>

#include "../model_backend.hpp"
#include "../ssm.hpp"

namespace nextick {

class CudaSsmModel final : public ModelBackend {
public:
    // Validates config and tensors as SsmModel does (the same errors), then needs a CUDA device:
    // std::runtime_error naming the CUDA error where there is none or it fails. precision is
    // "fp32" or "fp16"; rows_per_block (1..32) is how many rows a block of the kernel takes, lowered
    // to what the device's shared memory holds (std::invalid_argument when not even one row fits).
    CudaSsmModel(const SsmConfig& config, const SsmModel::TensorMap& tensors, int n_slots,
                 const std::string& precision = "fp32", int device = 0, int rows_per_block = 8);
    CudaSsmModel(const CudaSsmModel&) = delete;
    CudaSsmModel& operator=(const CudaSsmModel&) = delete;
    ~CudaSsmModel() override;

    // CUDA devices this process can use; 0 where there is no driver or no device (never throws).
    static int device_count();

    std::string backend_name() const override { return "cuda"; }
    int n_features() const override { return cfg_.n_features; }
    int n_outputs() const override { return cfg_.n_out; }
    int n_slots() const override;
    // ModelBackend::step; blocks until the predictions are in out.
    void step(int n_rows, const int32_t* slots, const float* x, const uint8_t* reset, float* out) override;
    void reset_slot(int slot) override;
    void reset_all() override;
    void grow(int n_slots) override;
    void resize(int n_slots) override;
    // The CPU backend's order (per layer the conv window, then the ssm state [n][h][p]), so a slot
    // moves between the two backends through get_state / set_state.
    size_t state_size() const override;
    void get_state(int slot, float* dst) const override;
    void set_state(int slot, const float* src) override;

    const SsmConfig& config() const { return cfg_; }
    const std::string& precision() const { return precision_; }
    int device() const { return device_; }
    std::string device_name() const;
    int rows_per_block() const;
    int graphs() const;  // buckets whose graph has been captured since the pool was last reallocated
    int last_waves() const;  // graph replays of the last step

private:
    struct Impl;
    SsmConfig cfg_;
    std::string precision_;
    int device_ = 0;
    mutable std::mutex mu_;
    std::unique_ptr<Impl> impl_;
};

}  // namespace nextick
