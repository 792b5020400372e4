// Python bindings of the model-backend seam (bind_backend.cpp: engine._core.ModelBackend and the
// adapter for Python objects) and of the SSM kernel (bind_ssm.cpp: engine._core.SsmModel);
// bindings.cpp calls them from its PYBIND11_MODULE body. Kept out of ssm.hpp so that C++ users of
// SsmModel need no pybind11.
#pragma once
#include <pybind11/pybind11.h>

#include <memory>

#include "model_backend.hpp"

void bind_backend(pybind11::module_& m);  // before bind_ssm: SsmModel derives from ModelBackend
void bind_ssm(pybind11::module_& m);

// The backend behind `obj`: itself when it is a compiled ModelBackend, else an adapter calling its
// Python methods (TypeError naming the first one it lacks).
std::shared_ptr<nextick::ModelBackend> as_backend(const pybind11::object& obj);
