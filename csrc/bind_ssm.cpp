// Python binding of SsmModel (ssm.hpp). step() takes its arrays without copying: an array of the
// wrong dtype, layout or shape is refused with an error naming the argument, never converted, so a
// caller that preallocates its buffers never pays a hidden copy.
#include "bind_ssm.hpp"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <climits>
#include <memory>
#include <string>
#include <vector>

#include "bind_util.hpp"
#include "ssm.hpp"

namespace py = pybind11;
using nextick::SsmConfig;
using nextick::SsmKind;
using nextick::SsmModel;
using nextick::SsmStateView;
using namespace nextick::bind;

namespace {

const char* const kConfigKeys[] = {"kind",    "n_features", "d_model", "n_layers", "d_inner",
                                   "headdim", "nheads",     "d_state", "d_conv",   "ngroups",
                                   "n_out",   "norm_eps",   "softplus_threshold"};

int config_int(const py::dict& d, const char* key, int dflt) {
    if (!d.contains(key)) return dflt;
    py::object v = d[key];
    if (py::isinstance<py::bool_>(v) || !PyIndex_Check(v.ptr()))
        throw py::type_error(std::string("SsmModel config['") + key + "'] must be an int, got " + type_name(v));
    py::int_ i = py::reinterpret_steal<py::int_>(PyNumber_Index(v.ptr()));
    if (!i) throw py::error_already_set();
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(i.ptr(), &overflow);
    if (overflow || x < INT_MIN || x > INT_MAX)
        throw py::value_error(std::string("SsmModel config['") + key + "'] = " + py::str(v).cast<std::string>() +
                              " is out of range: the kernel's sizes are 32-bit ints, and its weights are limited to " +
                              nextick::format_binary_bytes(nextick::kMaxWeightBytes));
    return static_cast<int>(x);
}

float config_float(const py::dict& d, const char* key, float dflt) {
    if (!d.contains(key)) return dflt;
    py::object v = d[key];
    if (py::isinstance<py::bool_>(v) || py::isinstance<py::str>(v) ||
        !(PyFloat_Check(v.ptr()) || PyIndex_Check(v.ptr()) || PyObject_HasAttrString(v.ptr(), "__float__")))
        throw py::type_error(std::string("SsmModel config['") + key + "'] must be a number, got " + type_name(v));
    return static_cast<float>(py::float_(v).cast<double>());
}

}  // namespace

SsmConfig parse_ssm_config(const py::dict& d) {
    for (auto item : d) {
        if (!py::isinstance<py::str>(item.first))
            throw py::type_error("SsmModel config keys must be str, got " + type_name(item.first));
        const std::string k = item.first.cast<std::string>();
        bool known = false;
        for (const char* name : kConfigKeys) known = known || k == name;
        if (!known) {
            std::string all;
            for (const char* name : kConfigKeys) all += std::string(all.empty() ? "" : ", ") + name;
            throw py::value_error("SsmModel config: unknown key '" + k + "' (known: " + all + ")");
        }
    }
    SsmConfig c;  // absent keys keep the defaults of SsmConfig
    if (d.contains("kind")) {
        py::object v = d["kind"];
        if (!py::isinstance<py::str>(v))
            throw py::type_error("SsmModel config['kind'] must be \"mamba2\" or \"s4d\", got " + type_name(v));
        c.kind = nextick::parse_ssm_kind(v.cast<std::string>());
    }
    c.n_features = config_int(d, "n_features", c.n_features);
    c.d_model = config_int(d, "d_model", c.d_model);
    c.n_layers = config_int(d, "n_layers", c.n_layers);
    c.d_inner = config_int(d, "d_inner", c.d_inner);
    c.headdim = config_int(d, "headdim", c.headdim);
    // nheads is derived (d_inner / headdim) when absent, so a dict need not repeat it.
    c.nheads = config_int(d, "nheads", c.headdim > 0 && c.d_inner % c.headdim == 0 ? c.d_inner / c.headdim : c.nheads);
    c.d_state = config_int(d, "d_state", c.d_state);
    c.d_conv = config_int(d, "d_conv", c.d_conv);
    c.ngroups = config_int(d, "ngroups", c.ngroups);
    c.n_out = config_int(d, "n_out", c.n_out);
    c.norm_eps = config_float(d, "norm_eps", c.norm_eps);
    c.softplus_threshold = config_float(d, "softplus_threshold", c.softplus_threshold);
    c.validate();
    return c;
}

SsmModel::TensorMap ssm_tensor_map(const py::dict& tensors) {
    SsmModel::TensorMap map;
    for (auto item : tensors) {
        if (!py::isinstance<py::str>(item.first))
            throw py::type_error("SsmModel tensors keys must be str, got " + type_name(item.first));
        const std::string name = item.first.cast<std::string>();
        const std::string what = "SsmModel tensor '" + name + "'";
        py::array a = as_array(item.second, what);
        if (!is_dtype<float>(a)) throw py::type_error(what + " must be float32, got dtype " + py::str(a.dtype()).cast<std::string>());
        if (!(a.flags() & py::array::c_style)) throw py::type_error(what + " must be C-contiguous");
        std::vector<size_t> shape(a.shape(), a.shape() + a.ndim());
        map[name] = {shape, static_cast<const float*>(a.data())};
    }
    return map;
}

py::dict ssm_config_dict(const SsmConfig& c) {
    py::dict d;
    d["kind"] = nextick::ssm_kind_name(c.kind);
    d["n_features"] = c.n_features;
    d["d_model"] = c.d_model;
    d["n_layers"] = c.n_layers;
    d["d_inner"] = c.d_inner;
    d["headdim"] = c.headdim;
    d["nheads"] = c.nheads;
    d["d_state"] = c.d_state;
    d["d_conv"] = c.d_conv;
    d["ngroups"] = c.ngroups;
    d["n_out"] = c.n_out;
    d["norm_eps"] = static_cast<double>(c.norm_eps);
    d["softplus_threshold"] = static_cast<double>(c.softplus_threshold);
    return d;
}

namespace {

py::array state_array(const SsmStateView& v) {
    // The capsule owns a reference to the pool buffer: the view stays valid even after the model
    // is resized (it then shows the old, detached pool) or garbage collected.
    auto* keep = new std::shared_ptr<float>(v.owner);
    py::capsule base(keep, [](void* p) { delete static_cast<std::shared_ptr<float>*>(p); });
    std::vector<py::ssize_t> shape(v.shape.begin(), v.shape.end());
    std::vector<py::ssize_t> strides;
    for (size_t s : v.strides) strides.push_back(static_cast<py::ssize_t>(s * sizeof(float)));
    return py::array_t<float>(shape, strides, v.data, base);
}

}  // namespace

void bind_ssm(py::module_& m) {
    m.attr("SSM_MAX_WEIGHT_BYTES") = static_cast<long long>(nextick::kMaxWeightBytes);
    m.attr("SSM_MAX_STATE_BYTES") = static_cast<long long>(nextick::kMaxStateBytes);
    py::class_<SsmModel, nextick::ModelBackend, std::shared_ptr<SsmModel>>(
        m, "SsmModel",
        "Streaming SSM inference (mamba2 or s4d) on this CPU over a pool of per-slot states, the first "
        "ModelBackend; see csrc/ssm.hpp. Views of its state pool: conv_state, ssm_state.")
        .def(py::init([](const py::dict& config, const py::dict& tensors, int n_slots) {
                 return std::make_shared<SsmModel>(parse_ssm_config(config), ssm_tensor_map(tensors), n_slots);
             }),
             py::arg("config"), py::arg("tensors"), py::arg("n_slots"),
             "config: dict with SsmConfig's keys (absent keys take the defaults; kind is \"mamba2\" or "
             "\"s4d\"); tensors: name -> float32 C-contiguous ndarray (copied); n_slots: state pool size.")
        .def_static(
            "footprint",
            [](const py::dict& config) {
                const nextick::SsmFootprint f = parse_ssm_config(config).footprint();
                py::dict d;
                d["weight_bytes"] = static_cast<long long>(f.weight_bytes);
                d["state_bytes_per_slot"] = static_cast<long long>(f.state_bytes_per_slot);
                return d;
            },
            py::arg("config"),
            "Bytes the kernel allocates for a config: weight_bytes (the weight arena) and state_bytes_per_slot "
            "(one instrument's states). ValueError, with both sizes, for a config past SSM_MAX_WEIGHT_BYTES or "
            "SSM_MAX_STATE_BYTES.")
        .def_static(
            "tensor_shapes",
            [](const py::dict& config) {
                py::dict d;
                for (const auto& t : SsmModel::tensor_shapes(parse_ssm_config(config))) {
                    py::tuple shape(t.second.size());
                    for (size_t i = 0; i < t.second.size(); ++i) shape[i] = t.second[i];
                    d[py::str(t.first)] = shape;
                }
                return d;
            },
            py::arg("config"), "Every tensor name the config needs, with its shape.")
        .def_property_readonly("kernel", &SsmModel::kernel,
                               "The compiled kernel variant step() runs (avx512, avx2, sse2, neon or generic).")
        .def("set_kernel", &SsmModel::set_kernel, py::arg("name"),
             "Run another kernel variant (one of SsmModel.kernels(), or 'auto'); the results are the same bits.")
        .def_static("kernels", &SsmModel::kernels,
                    "The kernel variants compiled into this build that this CPU runs, best first.")
        .def(
            "set_dropout_masks",
            [](SsmModel& model, py::array_t<float, py::array::c_style | py::array::forcecast> masks) {
                const SsmConfig& c = model.config();
                if (masks.ndim() != 3 || masks.shape(1) != c.n_layers || masks.shape(2) != c.d_model)
                    throw py::value_error("SsmModel.set_dropout_masks: masks must be float32[n_variants, n_layers=" +
                                          std::to_string(c.n_layers) + ", d_model=" + std::to_string(c.d_model) +
                                          "] (engine.model.dropout.dropout_masks makes them)");
                model.set_dropout_masks(masks.data(), static_cast<int>(masks.shape(0)));
            },
            py::arg("masks"),
            "MC dropout: masks float32[n_variants, n_layers, d_model] scale each layer's residual branch; slot s "
            "runs variant s % n_variants. An array of 0 variants clears them.")
        .def_property_readonly("dropout_variants", &SsmModel::dropout_variants,
                               "How many MC-dropout variants the slots cycle through (0: none).")
        .def_property_readonly("config", [](const SsmModel& model) { return ssm_config_dict(model.config()); })
        .def(
            "conv_state", [](const SsmModel& model, int layer) { return state_array(model.conv_state(layer)); },
            py::arg("layer"),
            "mamba2 conv window of a layer, float32[n_slots, d_conv-1, conv_dim] (index 0 = oldest), a "
            "writable view of the pool (no copy). ValueError for s4d.")
        .def(
            "ssm_state", [](const SsmModel& model, int layer) { return state_array(model.ssm_state(layer)); },
            py::arg("layer"),
            "SSM state of a layer, float32[n_slots, nheads, headdim, d_state] (mamba2) or [n_slots, d_inner, "
            "d_state] (s4d), a writable view of the pool (no copy). Not C-contiguous: the pool stores "
            "d_state outside headdim, the strides present the spec's order.")
        .def("__repr__", [](const SsmModel& model) {
            const SsmConfig& c = model.config();
            return std::string("SsmModel(kind=") + nextick::ssm_kind_name(c.kind) + ", n_features=" +
                   std::to_string(c.n_features) + ", d_model=" + std::to_string(c.d_model) +
                   ", n_layers=" + std::to_string(c.n_layers) + ", n_out=" + std::to_string(c.n_out) +
                   ", n_slots=" + std::to_string(model.n_slots()) + ", kernel=" + model.kernel() + ")";
        });
}
