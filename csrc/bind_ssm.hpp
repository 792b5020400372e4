// Python bindings of the model-backend seam (bind_backend.cpp: engine._core.ModelBackend and the
// adapter for Python objects) and of the SSM kernel (bind_ssm.cpp: engine._core.SsmModel);
// bindings.cpp calls them from its PYBIND11_MODULE body. Kept out of ssm.hpp so that C++ users of
// SsmModel need no pybind11.
#pragma once
#include <pybind11/pybind11.h>

#include <memory>

#include "model_backend.hpp"
#include "ssm.hpp"

void bind_backend(pybind11::module_& m);  // before bind_ssm: SsmModel derives from ModelBackend
void bind_ssm(pybind11::module_& m);
#if defined(NEXTICK_HAVE_CUDA)
void bind_cuda(pybind11::module_& m);  // cuda/bind_cuda.cpp, after bind_backend
#endif

// SsmModel's constructor arguments from Python, checked (TypeError/ValueError naming the key or
// tensor): the config dict (absent keys keep SsmConfig's defaults) and name -> float32 C-contiguous
// arrays, viewed in place (valid while the dict lives).
nextick::SsmConfig parse_ssm_config(const pybind11::dict& config);
nextick::SsmModel::TensorMap ssm_tensor_map(const pybind11::dict& tensors);
// The config as the dict parse_ssm_config takes, every key present.
pybind11::dict ssm_config_dict(const nextick::SsmConfig& config);

// The backend behind `obj`: itself when it is a compiled ModelBackend, else an adapter calling its
// Python methods (TypeError naming the first one it lacks).
std::shared_ptr<nextick::ModelBackend> as_backend(const pybind11::object& obj);
