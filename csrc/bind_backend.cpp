// Python binding of the model-backend seam (model_backend.hpp): engine._core.ModelBackend, the base
// of every compiled backend (SsmModel first), and the adapter that lets any Python object with the
// same methods stand behind the seam (engine.model.backend documents that protocol).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <memory>
#include <string>

#include "bind_ssm.hpp"
#include "bind_util.hpp"
#include "model_backend.hpp"
#include "tape_backend.hpp"

namespace py = pybind11;
using nextick::ModelBackend;
using nextick::PredictionTape;
using nextick::RecordingBackend;
using nextick::ReplayBackend;
using namespace nextick::bind;

namespace {

// A Python object behind the C++ seam. Its attributes backend_name, n_features, n_outputs, n_slots
// and state_size may be plain values, properties or methods; step(slots, x, reset, out) fills out
// in place. The arrays it is handed are views of the engine's buffers (no copy), valid only during
// the call; slots, x and reset are read-only. The GIL is taken for each call, so the engine may run
// with it released.
class PyObjectBackend final : public ModelBackend {
public:
    explicit PyObjectBackend(py::object obj) : obj_(std::move(obj)) {
        for (const char* name : {"backend_name", "n_features", "n_outputs", "n_slots", "state_size", "step",
                                 "reset_slot", "reset_all", "grow", "resize", "get_state", "set_state"})
            if (!py::hasattr(obj_, name))
                throw py::type_error(type_name(obj_) + " is not a model backend: it has no '" + name +
                                     "' (see engine.model.backend.ModelBackend for the protocol)");
    }
    ~PyObjectBackend() override {
        py::gil_scoped_acquire gil;
        obj_ = py::object();
    }

    std::string backend_name() const override { return value("backend_name").cast<std::string>(); }
    int n_features() const override { return value("n_features").cast<int>(); }
    int n_outputs() const override { return value("n_outputs").cast<int>(); }
    int n_slots() const override { return value("n_slots").cast<int>(); }
    size_t state_size() const override { return value("state_size").cast<size_t>(); }

    void step(int n_rows, const int32_t* slots, const float* x, const uint8_t* reset, float* out) override {
        py::gil_scoped_acquire gil;
        const py::ssize_t n = n_rows, f = n_features(), o = n_outputs();
        py::none owner;  // the arrays borrow the engine's buffers for the call
        py::array_t<int32_t> s({n}, {static_cast<py::ssize_t>(sizeof(int32_t))}, slots, owner);
        py::array_t<float> xa({n, f}, {f * static_cast<py::ssize_t>(sizeof(float)), static_cast<py::ssize_t>(sizeof(float))}, x,
                              owner);
        py::array_t<uint8_t> r = reset ? py::array_t<uint8_t>({n}, {static_cast<py::ssize_t>(1)}, reset, owner)
                                       : py::array_t<uint8_t>(n);
        if (!reset) std::fill(r.mutable_data(), r.mutable_data() + n, uint8_t{0});
        py::array_t<float> oa({n, o}, {o * static_cast<py::ssize_t>(sizeof(float)), static_cast<py::ssize_t>(sizeof(float))},
                              out, owner);
        for (py::array* a : std::initializer_list<py::array*>{&s, &xa, &r}) a->attr("flags").attr("writeable") = false;
        obj_.attr("step")(s, xa, r, oa);
    }
    void reset_slot(int slot) override { call("reset_slot", slot); }
    void reset_all() override { call("reset_all"); }
    void grow(int n_slots) override { call("grow", n_slots); }
    void resize(int n_slots) override { call("resize", n_slots); }

    void get_state(int slot, float* dst) const override {
        py::gil_scoped_acquire gil;
        py::array_t<float, py::array::c_style | py::array::forcecast> a = obj_.attr("get_state")(slot);
        const size_t n = state_size();
        if (static_cast<size_t>(a.size()) != n)
            throw py::value_error(type_name(obj_) + ".get_state returned " + std::to_string(a.size()) +
                                  " floats; state_size is " + std::to_string(n));
        std::copy(a.data(), a.data() + n, dst);
    }
    void set_state(int slot, const float* src) override {
        py::gil_scoped_acquire gil;
        const py::ssize_t n = static_cast<py::ssize_t>(state_size());
        py::array_t<float> a(n);
        std::copy(src, src + n, a.mutable_data());
        obj_.attr("set_state")(slot, a);
    }

    const py::object& object() const { return obj_; }

private:
    // The attribute's value, calling it when it is a method.
    py::object value(const char* name) const {
        py::gil_scoped_acquire gil;
        py::object v = obj_.attr(name);
        return PyCallable_Check(v.ptr()) ? v() : v;
    }
    template <class... A>
    void call(const char* name, A... args) {
        py::gil_scoped_acquire gil;
        obj_.attr(name)(args...);
    }

    py::object obj_;
};

// The numpy arrays of one step, checked: int32 slots[n], float32 x[n, n_features], uint8/bool
// reset[n], float32 out[n, n_outputs] (allocated when None), all used in place.
py::array step_arrays(ModelBackend& model, const py::object& slots_obj, const py::object& x_obj,
                      const py::object& reset_obj, const py::object& out_obj) {
    py::array slots = as_array(slots_obj, "step: slots");
    if (!is_dtype<int32_t>(slots))
        throw py::type_error("step: slots must be int32, got dtype " + py::str(slots.dtype()).cast<std::string>());
    if (slots.ndim() != 1) throw py::value_error("step: slots must be 1-D, got shape " + shape_str(slots));
    require_layout(slots, "step: slots");
    const py::ssize_t n = slots.shape(0);
    if (n > INT_MAX) throw py::value_error("step: too many rows");
    const int n_features = model.n_features(), n_outputs = model.n_outputs();

    py::array x = as_array(x_obj, "step: x");
    require_float_matrix(x, "step: x", n, n_features);

    py::array reset = as_array(reset_obj, "step: reset");
    if (!is_dtype<uint8_t>(reset) && !is_dtype<bool>(reset))
        throw py::type_error("step: reset must be uint8 or bool, got dtype " + py::str(reset.dtype()).cast<std::string>());
    if (reset.ndim() != 1 || reset.shape(0) != n)
        throw py::value_error("step: reset must have shape (" + std::to_string(n) + ",), got " + shape_str(reset));
    require_layout(reset, "step: reset");

    py::array out;
    if (out_obj.is_none()) {
        out = py::array_t<float>({n, static_cast<py::ssize_t>(n_outputs)});
    } else {
        out = as_array(out_obj, "step: out");
        require_float_matrix(out, "step: out", n, n_outputs);
        if (!out.writeable()) throw py::value_error("step: out is read-only");
    }
    const auto* s = static_cast<const int32_t*>(slots.data());
    const auto* xp = static_cast<const float*>(x.data());
    const auto* r = static_cast<const uint8_t*>(reset.data());
    auto* o = static_cast<float*>(out.mutable_data());
    {
        py::gil_scoped_release nogil;
        model.step(static_cast<int>(n), s, xp, r, o);
    }
    return out;
}

template <typename T>
py::array_t<T> copy_array(const std::vector<T>& v, py::ssize_t rows, py::ssize_t cols = 0) {
    py::array_t<T> a = cols ? py::array_t<T>({rows, cols}) : py::array_t<T>(rows);
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
}

std::shared_ptr<const PredictionTape> tape_from_arrays(int n_features, py::array_t<int64_t, py::array::c_style> counts,
                                                       py::array_t<int32_t, py::array::c_style> slots,
                                                       py::array_t<float, py::array::c_style> out) {
    if (out.ndim() != 2 || slots.ndim() != 1 || counts.ndim() != 1 || out.shape(0) != slots.shape(0))
        throw py::value_error("PredictionTape: counts int64[calls], slots int32[rows] and out float32[rows, n_outputs]");
    auto t = std::make_shared<PredictionTape>();
    t->n_features = n_features;
    t->n_outputs = static_cast<int>(out.shape(1));
    t->counts.assign(counts.data(), counts.data() + counts.size());
    int64_t at = 0;
    for (int64_t c : t->counts) {
        if (c < 0) throw py::value_error("PredictionTape: a call has a negative row count");
        t->offsets.push_back(at);
        at += c;
    }
    if (at != slots.shape(0)) throw py::value_error("PredictionTape: counts add up to " + std::to_string(at) +
                                                    " rows, slots has " + std::to_string(slots.shape(0)));
    t->slots.assign(slots.data(), slots.data() + slots.size());
    t->out.assign(out.data(), out.data() + out.size());
    return t;
}

void bind_tape(py::module_& m) {
    py::class_<PredictionTape, std::shared_ptr<PredictionTape>>(
        m, "PredictionTape",
        "Every call a RecordingBackend saw in one run: rows per call, their slots and the model's outputs "
        "(csrc/tape_backend.hpp). Pickles as its arrays.")
        .def(py::init([](int n_features, py::array_t<int64_t, py::array::c_style> counts,
                         py::array_t<int32_t, py::array::c_style> slots, py::array_t<float, py::array::c_style> out) {
                 return std::const_pointer_cast<PredictionTape>(tape_from_arrays(n_features, counts, slots, out));
             }),
             py::arg("n_features"), py::arg("counts"), py::arg("slots"), py::arg("out"))
        .def_readonly("n_features", &PredictionTape::n_features)
        .def_readonly("n_outputs", &PredictionTape::n_outputs)
        .def_property_readonly("n_calls", [](const PredictionTape& t) { return t.counts.size(); })
        .def_property_readonly("counts", [](const PredictionTape& t) { return copy_array(t.counts, t.counts.size()); })
        .def_property_readonly("slots", [](const PredictionTape& t) { return copy_array(t.slots, t.slots.size()); })
        .def_property_readonly("out", [](const PredictionTape& t) {
            return copy_array(t.out, static_cast<py::ssize_t>(t.slots.size()), t.n_outputs);
        })
        .def(py::pickle(
            [](const PredictionTape& t) {
                return py::make_tuple(t.n_features, copy_array(t.counts, t.counts.size()), copy_array(t.slots, t.slots.size()),
                                      copy_array(t.out, static_cast<py::ssize_t>(t.slots.size()), t.n_outputs));
            },
            [](const py::tuple& s) {
                auto t = tape_from_arrays(s[0].cast<int>(), s[1].cast<py::array_t<int64_t, py::array::c_style>>(),
                                          s[2].cast<py::array_t<int32_t, py::array::c_style>>(),
                                          s[3].cast<py::array_t<float, py::array::c_style>>());
                return std::const_pointer_cast<PredictionTape>(t);
            }));
    py::class_<RecordingBackend, ModelBackend, std::shared_ptr<RecordingBackend>>(
        m, "RecordingBackend",
        "Wraps a backend for one run and records every step call (slots and outputs) into a PredictionTape.")
        .def(py::init([](const py::object& inner) { return std::make_shared<RecordingBackend>(as_backend(inner)); }),
             py::arg("inner"))
        .def("tape", [](const RecordingBackend& r) { return std::const_pointer_cast<PredictionTape>(r.tape()); },
             "The tape of the run so far (a fresh run, i.e. resize, starts a new one).");
    py::class_<ReplayBackend, ModelBackend, std::shared_ptr<ReplayBackend>>(
        m, "ReplayBackend",
        "Hands a PredictionTape's outputs back call by call; RuntimeError on the first call that differs from "
        "the recording. variants: rows per instrument in the recording (MC dropout); variant: the one to "
        "replay (the run steps one row per instrument), or -1 for every row as recorded.")
        .def(py::init([](const std::shared_ptr<PredictionTape>& tape, int variants, int variant) {
                 return std::make_shared<ReplayBackend>(tape, variants, variant);
             }),
             py::arg("tape"), py::arg("variants") = 1, py::arg("variant") = -1)
        .def_property_readonly("calls_replayed", &ReplayBackend::calls_replayed)
        .def_property_readonly("calls_recorded", &ReplayBackend::calls_recorded);
}

}  // namespace

std::shared_ptr<ModelBackend> as_backend(const py::object& obj) {
    if (py::isinstance<ModelBackend>(obj)) return obj.cast<std::shared_ptr<ModelBackend>>();
    return std::make_shared<PyObjectBackend>(obj);
}

void bind_backend(py::module_& m) {
    py::class_<ModelBackend, std::shared_ptr<ModelBackend>>(
        m, "ModelBackend",
        "A signal model behind the engine's seam (csrc/model_backend.hpp): a pool of per-instrument "
        "state slots stepped in batches with a reset mask. Compiled backends derive from it; any Python "
        "object with the same attributes can be handed to the engine instead (engine.model.backend).")
        .def_property_readonly("backend_name", &ModelBackend::backend_name, "\"cpu\", \"onnxruntime\", ...")
        .def_property_readonly("n_features", &ModelBackend::n_features)
        .def_property_readonly("n_outputs", &ModelBackend::n_outputs)
        .def_property_readonly("n_slots", &ModelBackend::n_slots)
        .def_property_readonly("state_size", &ModelBackend::state_size, "Floats in one slot's whole state.")
        .def("step", &step_arrays, py::arg("slots"), py::arg("x"), py::arg("reset"), py::arg("out") = py::none(),
             "One step per row: slots int32[n] (-1 = padding row, NaN out, no state touched), x float32[n, "
             "n_features], reset uint8/bool[n] (zero the slot first), out float32[n, n_outputs] or None. "
             "Returns out. Arrays are used in place, never converted.")
        .def("reset_slot", &ModelBackend::reset_slot, py::arg("slot"), "Zero one slot's state.")
        .def("reset_all", &ModelBackend::reset_all, "Zero every slot's state.")
        .def("grow", &ModelBackend::grow, py::arg("n_slots"),
             "At least n_slots slots; existing slots keep their states, new ones start at zero.")
        .def("resize", &ModelBackend::resize, py::arg("n_slots"), "Exactly n_slots slots, all zero.")
        .def(
            "get_state",
            [](const ModelBackend& b, int slot) {
                py::array_t<float> a(static_cast<py::ssize_t>(b.state_size()));
                b.get_state(slot, a.mutable_data());
                return a;
            },
            py::arg("slot"), "A copy of one slot's whole state, float32[state_size].")
        .def(
            "set_state",
            [](ModelBackend& b, int slot, const py::object& state_obj) {
                py::array a = as_array(state_obj, "set_state: state");
                if (!is_dtype<float>(a)) throw py::type_error("set_state: state must be float32");
                if (a.ndim() != 1 || static_cast<size_t>(a.shape(0)) != b.state_size())
                    throw py::value_error("set_state: state must have shape (" + std::to_string(b.state_size()) +
                                          ",), got " + shape_str(a));
                require_layout(a, "set_state: state");
                b.set_state(slot, static_cast<const float*>(a.data()));
            },
            py::arg("slot"), py::arg("state"), "Overwrite one slot's whole state (float32[state_size]).");
    bind_tape(m);
    m.def(
        "as_backend", [](const py::object& obj) { return as_backend(obj); }, py::arg("model"),
        "The ModelBackend the engine steps for `model`: itself when compiled, else an adapter that calls "
        "its Python methods (TypeError naming the first missing one).");
}
