// Python binding of CudaSsmModel (ssm_cuda.hpp): engine._core.CudaSsmModel, only in builds with
// NEXTICK_CUDA=ON. Its step, state and slot calls are ModelBackend's (bind_backend.cpp), so the
// engine and engine.model.backend use it as they use SsmModel.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>

#include "../bind_ssm.hpp"
#include "ssm_cuda.hpp"

namespace py = pybind11;
using nextick::CudaSsmModel;

void bind_cuda(py::module_& m) {
    py::class_<CudaSsmModel, nextick::ModelBackend, std::shared_ptr<CudaSsmModel>>(
        m, "CudaSsmModel",
        "The SSM step on an NVIDIA GPU (csrc/cuda): the same config, tensors and slot semantics as SsmModel, "
        "states resident on the device, one CUDA graph replay per step and batch bucket. fp32 computes the "
        "CPU kernel's bits; fp16 keeps the matrices in binary16 and everything else in fp32.")
        .def(py::init([](const py::dict& config, const py::dict& tensors, int n_slots, const std::string& precision,
                         int device, int rows_per_block) {
                 return std::make_shared<CudaSsmModel>(parse_ssm_config(config), ssm_tensor_map(tensors), n_slots,
                                                       precision, device, rows_per_block);
             }),
             py::arg("config"), py::arg("tensors"), py::arg("n_slots"), py::arg("precision") = "fp32",
             py::arg("device") = 0, py::arg("rows_per_block") = 8,
             "As SsmModel(config, tensors, n_slots); precision \"fp32\" or \"fp16\"; device: the CUDA device index; "
             "rows_per_block: rows a kernel block takes (1..32, lowered to what shared memory holds). "
             "RuntimeError where no CUDA device can be used.")
        .def_static("device_count", &CudaSsmModel::device_count,
                    "CUDA devices this process can use; 0 without a driver or a device.")
        .def_property_readonly("config", [](const CudaSsmModel& model) { return ssm_config_dict(model.config()); })
        .def_property_readonly("precision", &CudaSsmModel::precision)
        .def_property_readonly("device", &CudaSsmModel::device)
        .def_property_readonly("device_name", &CudaSsmModel::device_name)
        .def_property_readonly("rows_per_block", &CudaSsmModel::rows_per_block)
        .def_property_readonly("graphs", &CudaSsmModel::graphs,
                               "Batch buckets whose CUDA graph is captured (since the pool was last reallocated).")
        .def_property_readonly("last_waves", &CudaSsmModel::last_waves,
                               "Graph replays the last step made (more than 1 only when a batch repeats a slot).")
        .def("__repr__", [](const CudaSsmModel& model) {
            const nextick::SsmConfig& c = model.config();
            return std::string("CudaSsmModel(kind=") + nextick::ssm_kind_name(c.kind) + ", d_model=" +
                   std::to_string(c.d_model) + ", n_layers=" + std::to_string(c.n_layers) +
                   ", n_slots=" + std::to_string(model.n_slots()) + ", precision=" + model.precision() +
                   ", device=" + std::to_string(model.device()) + ")";
        });
}
