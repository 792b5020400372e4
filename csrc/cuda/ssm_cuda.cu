// CudaSsmModel (ssm_cuda.hpp): device memory, the kernel, its CUDA graphs and the mapped pinned
// buffers. The kernel's body is ssm_cuda_step.hpp; the step's host logic is ssm_cuda_host.hpp.
// Build flags that the fp32 path's bits depend on (CMakeLists.txt, tests/test_cuda_compile.py):
// --fmad=false, and none of --use_fast_math, -ftz=true, -prec-div=false, -prec-sqrt=false.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "ssm_cuda.hpp"
#include "ssm_cuda_host.hpp"
#include "ssm_cuda_step.hpp"

namespace nextick {

namespace {

constexpr int kThreads = 256;  // per block: rows x heads x headdim of 8 default rows is 4 items each

void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess)
        throw std::runtime_error(std::string("CudaSsmModel: ") + what + " failed: " + cudaGetErrorName(e) + ": " +
                                 cudaGetErrorString(e));
}

void check_slot(const char* what, int slot, int n_slots) {
    if (slot < 0 || slot >= n_slots)
        throw std::out_of_range(std::string("CudaSsmModel.") + what + ": slot " + std::to_string(slot) + " not in [0, " +
                                std::to_string(n_slots) + ")");
}

struct BlockSync {
    __device__ void operator()() const { __syncthreads(); }
};

template <class W>
__global__ void __launch_bounds__(kThreads) ssm_step_kernel(const cuda::StepArgs<W> args) {
    extern __shared__ float smem[];
    BlockSync sync;
    cuda::step_block(args, static_cast<int>(blockIdx.x), static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x),
                     smem, sync);
}

// Owners of device memory, mapped pinned host memory and a graph: released in their destructors,
// whose errors are dropped (nothing can be done about them there).
template <class T>
struct DeviceArray {
    T* p = nullptr;
    DeviceArray() = default;
    DeviceArray(const DeviceArray&) = delete;
    DeviceArray& operator=(const DeviceArray&) = delete;
    ~DeviceArray() { cudaFree(p); }
    void alloc(size_t n, const char* what) {
        if (n > 0) check(cudaMalloc(&p, n * sizeof(T)), what);
    }
    void swap(DeviceArray& o) { std::swap(p, o.p); }
};

struct PinnedBlock {
    void* host = nullptr;
    void* dev = nullptr;
    PinnedBlock() = default;
    PinnedBlock(const PinnedBlock&) = delete;
    PinnedBlock& operator=(const PinnedBlock&) = delete;
    ~PinnedBlock() { cudaFreeHost(host); }
    void swap(PinnedBlock& o) {
        std::swap(host, o.host);
        std::swap(dev, o.dev);
    }
};

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

}  // namespace

struct CudaSsmModel::Impl {
    cuda::WeightImage img;
    bool fp16 = false;
    int rows_per_block = 0;
    size_t smem_bytes = 0;
    DeviceArray<float> f32;
    DeviceArray<cuda::half_bits> f16;
    DeviceArray<cuda::LayerWeights<float>> layers32;
    DeviceArray<cuda::LayerWeights<cuda::half_bits>> layers16;
    DeviceArray<float> pool;
    int n_slots = 0;
    PinnedBlock io_mem;
    cuda::IoBuffers io, io_dev;  // the same buffers, as the host and as the device address them
    cudaStream_t stream = nullptr;
    std::map<int, cudaGraphExec_t> graphs;
    cuda::StepDriver driver;

    ~Impl() {
        drop_graphs();
        if (stream) cudaStreamDestroy(stream);
    }

    void drop_graphs() {
        for (auto& g : graphs) cudaGraphExecDestroy(g.second);
        graphs.clear();
    }

    float* slot_state(int slot) const { return pool.p + static_cast<size_t>(slot) * img.dims.state_size; }

    void sync(const char* what) const { check(cudaStreamSynchronize(stream), what); }

    // A zeroed pool of n slots; with keep, the first min(old, n) slots copied over. The graphs
    // point at the pool and the IO buffers, so they are captured again for the new ones.
    void alloc_pool(const SsmConfig& cfg, int n, bool keep) {
        SsmModel::check_pool(cfg, n, "CudaSsmModel");
        const size_t ss = img.dims.state_size;
        DeviceArray<float> fresh;
        fresh.alloc(static_cast<size_t>(n) * ss, "cudaMalloc of the state pool");
        if (n > 0) check(cudaMemsetAsync(fresh.p, 0, static_cast<size_t>(n) * ss * sizeof(float), stream), "zeroing the state pool");
        const int kept = keep ? std::min(n, n_slots) : 0;
        if (kept > 0)
            check(cudaMemcpyAsync(fresh.p, pool.p, static_cast<size_t>(kept) * ss * sizeof(float), cudaMemcpyDeviceToDevice, stream),
                  "copying the kept slots");
        sync("allocating the state pool");
        drop_graphs();
        pool.swap(fresh);
        n_slots = n;
        alloc_io(cuda::bucket_rows(n));
    }

    // Mapped pinned buffers for `rows` rows: slots, reset flags, features, predictions.
    void alloc_io(int rows) {
        if (rows == io.rows) return;
        const cuda::StepDims& d = img.dims;
        const size_t r = static_cast<size_t>(rows);
        const size_t at_reset = align256(r * sizeof(int32_t)), at_x = at_reset + align256(r);
        const size_t at_out = at_x + align256(r * d.F * sizeof(float)), bytes = at_out + align256(r * d.n_out * sizeof(float));
        PinnedBlock fresh;
        check(cudaHostAlloc(&fresh.host, bytes, cudaHostAllocMapped), "cudaHostAlloc of the mapped input/output buffers");
        check(cudaHostGetDevicePointer(&fresh.dev, fresh.host, 0), "cudaHostGetDevicePointer");
        drop_graphs();
        io_mem.swap(fresh);
        auto carve = [&](char* base) {
            return cuda::IoBuffers{reinterpret_cast<int32_t*>(base), reinterpret_cast<uint8_t*>(base + at_reset),
                                   reinterpret_cast<float*>(base + at_x), reinterpret_cast<float*>(base + at_out), rows};
        };
        io = carve(static_cast<char*>(io_mem.host));
        io_dev = carve(static_cast<char*>(io_mem.dev));
    }

    template <class W>
    void launch(const W* mat, const cuda::LayerWeights<W>* layers, int bucket) {
        cuda::StepArgs<W> a = cuda::step_args(img, f32.p, mat, layers, pool.p);
        a.n_rows = bucket;
        a.rows_per_block = rows_per_block;
        a.slots = io_dev.slots, a.reset = io_dev.reset, a.x = io_dev.x, a.out = io_dev.out;
        const int blocks = (bucket + rows_per_block - 1) / rows_per_block;
        ssm_step_kernel<W><<<blocks, kThreads, smem_bytes, stream>>>(a);
    }

    // The bucket's graph, captured on first use: one kernel node with every pointer fixed.
    cudaGraphExec_t graph(int bucket) {
        auto it = graphs.find(bucket);
        if (it != graphs.end()) return it->second;
        check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
        if (fp16)
            launch(f16.p, layers16.p, bucket);
        else
            launch(f32.p, layers32.p, bucket);
        const cudaError_t launched = cudaGetLastError();
        cudaGraph_t g = nullptr;
        const cudaError_t ended = cudaStreamEndCapture(stream, &g);
        check(launched, "launching the step kernel for capture");
        check(ended, "cudaStreamEndCapture");
        cudaGraphExec_t exec = nullptr;
        const cudaError_t made = cudaGraphInstantiate(&exec, g, 0);
        cudaGraphDestroy(g);
        check(made, "cudaGraphInstantiate");
        graphs.emplace(bucket, exec);
        return exec;
    }

    template <class W>
    void set_smem_limit() {
        check(cudaFuncSetAttribute(ssm_step_kernel<W>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_bytes)),
              "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
    }
};

int CudaSsmModel::device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear it: a missing driver is an answer here, not an error
        return 0;
    }
    return n;
}

CudaSsmModel::CudaSsmModel(const SsmConfig& config, const SsmModel::TensorMap& tensors, int n_slots,
                           const std::string& precision, int device, int rows_per_block)
    : cfg_(config), precision_(precision), device_(device), impl_(std::make_unique<Impl>()) {
    if (precision != "fp32" && precision != "fp16")
        throw std::invalid_argument("CudaSsmModel: precision must be \"fp32\" or \"fp16\", got \"" + precision + "\"");
    if (n_slots < 0) throw std::invalid_argument("CudaSsmModel: n_slots must be >= 0, got " + std::to_string(n_slots));
    if (rows_per_block < 1 || rows_per_block > cuda::kMaxRowsPerBlock)
        throw std::invalid_argument("CudaSsmModel: rows_per_block must be in [1, " + std::to_string(cuda::kMaxRowsPerBlock) +
                                    "], got " + std::to_string(rows_per_block));
    // The CPU model with no slots does every check on the config and the tensors, and lays the
    // weights out; the device gets a copy of its arena.
    const SsmModel layout(config, tensors, 0);
    SsmModel::check_pool(cfg_, n_slots, "CudaSsmModel");
    Impl& m = *impl_;
    m.img = cuda::weight_image(layout);
    m.fp16 = precision == "fp16";

    int count = 0;
    const cudaError_t counted = cudaGetDeviceCount(&count);
    if (counted != cudaSuccess || count == 0)
        throw std::runtime_error(std::string("CudaSsmModel: no CUDA device to run on (cudaGetDeviceCount: ") +
                                 (counted != cudaSuccess ? cudaGetErrorString(counted) : "0 devices") +
                                 "); use the cpu backend on this machine");
    if (device < 0 || device >= count)
        throw std::invalid_argument("CudaSsmModel: device " + std::to_string(device) + " not in [0, " + std::to_string(count) + ")");
    check(cudaSetDevice(device), "cudaSetDevice");

    int smem_optin = 0;
    check(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cudaDeviceGetAttribute");
    m.rows_per_block = cuda::rows_per_block_within(m.img.dims, rows_per_block, static_cast<size_t>(smem_optin));
    if (m.rows_per_block == 0)
        throw std::invalid_argument("CudaSsmModel: one row of " + cfg_.sizes() + " needs " +
                                    std::to_string(cuda::block_layout(m.img.dims, 1).floats * sizeof(float)) +
                                    " bytes of shared memory, over this device's " + std::to_string(smem_optin) +
                                    " per block; run this model on the cpu backend");
    m.smem_bytes = cuda::block_layout(m.img.dims, m.rows_per_block).floats * sizeof(float);
    if (m.fp16)
        m.set_smem_limit<cuda::half_bits>();
    else
        m.set_smem_limit<float>();

    check(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking), "cudaStreamCreate");
    const size_t n = m.img.arena_floats;
    m.f32.alloc(n, "cudaMalloc of the weights");
    check(cudaMemcpy(m.f32.p, layout.weight_arena(), n * sizeof(float), cudaMemcpyHostToDevice), "copying the weights");
    if (m.fp16) {
        std::vector<cuda::half_bits> half(n);
        for (size_t i = 0; i < n; ++i) half[i] = __half_as_ushort(__float2half_rn(layout.weight_arena()[i]));
        m.f16.alloc(n, "cudaMalloc of the fp16 weights");
        check(cudaMemcpy(m.f16.p, half.data(), n * sizeof(cuda::half_bits), cudaMemcpyHostToDevice), "copying the fp16 weights");
        const auto layers = cuda::layer_weights(m.img, m.f32.p, static_cast<const cuda::half_bits*>(m.f16.p));
        m.layers16.alloc(layers.size(), "cudaMalloc of the layer table");
        check(cudaMemcpy(m.layers16.p, layers.data(), layers.size() * sizeof(layers[0]), cudaMemcpyHostToDevice),
              "copying the layer table");
    } else {
        const auto layers = cuda::layer_weights(m.img, m.f32.p, static_cast<const float*>(m.f32.p));
        m.layers32.alloc(layers.size(), "cudaMalloc of the layer table");
        check(cudaMemcpy(m.layers32.p, layers.data(), layers.size() * sizeof(layers[0]), cudaMemcpyHostToDevice),
              "copying the layer table");
    }
    m.alloc_pool(cfg_, n_slots, false);
}

CudaSsmModel::~CudaSsmModel() {
    // impl_'s memory, stream and graphs belong to this device, whichever the thread has current.
    cudaSetDevice(device_);
}

int CudaSsmModel::n_slots() const {
    std::lock_guard<std::mutex> lock(mu_);
    return impl_->n_slots;
}

size_t CudaSsmModel::state_size() const { return impl_->img.dims.state_size; }

int CudaSsmModel::rows_per_block() const { return impl_->rows_per_block; }

int CudaSsmModel::graphs() const {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int>(impl_->graphs.size());
}

int CudaSsmModel::last_waves() const {
    std::lock_guard<std::mutex> lock(mu_);
    return impl_->driver.waves();
}

std::string CudaSsmModel::device_name() const {
    cudaDeviceProp prop;
    check(cudaGetDeviceProperties(&prop, device_), "cudaGetDeviceProperties");
    return prop.name;
}

void CudaSsmModel::step(int n_rows, const int32_t* slots, const float* x, const uint8_t* reset, float* out) {
    std::lock_guard<std::mutex> lock(mu_);
    Impl& m = *impl_;
    check(cudaSetDevice(device_), "cudaSetDevice");
    m.driver.step("CudaSsmModel", m.n_slots, cfg_.n_features, cfg_.n_out, n_rows, slots, x, reset, out, m.io, [&](int bucket) {
        check(cudaGraphLaunch(m.graph(bucket), m.stream), "cudaGraphLaunch");
        m.sync("the step kernel");
    });
}

void CudaSsmModel::reset_slot(int slot) {
    std::lock_guard<std::mutex> lock(mu_);
    Impl& m = *impl_;
    check_slot("reset_slot", slot, m.n_slots);
    check(cudaSetDevice(device_), "cudaSetDevice");
    check(cudaMemsetAsync(m.slot_state(slot), 0, state_size() * sizeof(float), m.stream), "cudaMemsetAsync");
    m.sync("reset_slot");
}

void CudaSsmModel::reset_all() {
    std::lock_guard<std::mutex> lock(mu_);
    Impl& m = *impl_;
    check(cudaSetDevice(device_), "cudaSetDevice");
    if (m.n_slots > 0)
        check(cudaMemsetAsync(m.pool.p, 0, static_cast<size_t>(m.n_slots) * state_size() * sizeof(float), m.stream),
              "cudaMemsetAsync");
    m.sync("reset_all");
}

void CudaSsmModel::grow(int n_slots) {
    std::lock_guard<std::mutex> lock(mu_);
    check(cudaSetDevice(device_), "cudaSetDevice");
    if (n_slots > impl_->n_slots) impl_->alloc_pool(cfg_, n_slots, true);
}

void CudaSsmModel::resize(int n_slots) {
    if (n_slots < 0) throw std::invalid_argument("CudaSsmModel.resize: n_slots must be >= 0, got " + std::to_string(n_slots));
    std::lock_guard<std::mutex> lock(mu_);
    check(cudaSetDevice(device_), "cudaSetDevice");
    impl_->alloc_pool(cfg_, n_slots, false);
}

void CudaSsmModel::get_state(int slot, float* dst) const {
    std::lock_guard<std::mutex> lock(mu_);
    const Impl& m = *impl_;
    check_slot("get_state", slot, m.n_slots);
    check(cudaSetDevice(device_), "cudaSetDevice");
    check(cudaMemcpyAsync(dst, m.slot_state(slot), state_size() * sizeof(float), cudaMemcpyDeviceToHost, m.stream),
          "copying a slot's state to the host");
    m.sync("get_state");
}

void CudaSsmModel::set_state(int slot, const float* src) {
    std::lock_guard<std::mutex> lock(mu_);
    const Impl& m = *impl_;
    check_slot("set_state", slot, m.n_slots);
    check(cudaSetDevice(device_), "cudaSetDevice");
    check(cudaMemcpyAsync(m.slot_state(slot), src, state_size() * sizeof(float), cudaMemcpyHostToDevice, m.stream),
          "copying a slot's state to the device");
    m.sync("set_state");
}

}  // namespace nextick
