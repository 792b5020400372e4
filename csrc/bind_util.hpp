// Helpers the bindings share for taking numpy arrays in place: an array of the wrong dtype, layout
// or shape is refused with an error naming the argument, never converted, so a caller that
// preallocates its buffers never pays a hidden copy.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

namespace nextick {
namespace bind {

namespace py = pybind11;

inline std::string type_name(py::handle h) { return Py_TYPE(h.ptr())->tp_name; }

inline std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

// The array behind `obj`, or a TypeError naming `what`.
inline py::array as_array(const py::handle& obj, const std::string& what) {
    if (!py::isinstance<py::array>(obj)) throw py::type_error(what + " must be a numpy.ndarray, got " + type_name(obj));
    return py::reinterpret_borrow<py::array>(obj);
}

// Dtype, layout and alignment, so that the raw pointer can be read as T[] in C order.
template <class T>
inline bool is_dtype(const py::array& a) {
    return py::array_t<T>::check_(a);
}

inline void require_layout(const py::array& a, const std::string& what) {
    if (!(a.flags() & py::array::c_style)) throw py::type_error(what + " must be C-contiguous");
    if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_)) throw py::type_error(what + " must be aligned");
}

// A float32 [rows, cols] array usable in place, or the TypeError/ValueError naming `what`.
inline void require_float_matrix(const py::array& a, const std::string& what, py::ssize_t rows, int cols) {
    if (!is_dtype<float>(a))
        throw py::type_error(what + " must be float32, got dtype " + py::str(a.dtype()).cast<std::string>());
    if (a.ndim() != 2 || a.shape(0) != rows || a.shape(1) != cols)
        throw py::value_error(what + " must have shape (" + std::to_string(rows) + ", " + std::to_string(cols) +
                              "), got " + shape_str(a));
    require_layout(a, what);
}

}  // namespace bind
}  // namespace nextick
