// Python binding of the SSM step kernel (engine._core.SsmModel); bindings.cpp calls it from its
// PYBIND11_MODULE body. Kept out of ssm.hpp so that C++ users of SsmModel need no pybind11.
#pragma once
#include <pybind11/pybind11.h>

void bind_ssm(pybind11::module_& m);
