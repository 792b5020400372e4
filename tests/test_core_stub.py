"""engine/_core.pyi, the type stub of the compiled core, says what the module really exports: the same
module-level names, the same members per class, and the same parameter names per function (read
from the signatures pybind11 writes into each docstring). A binding added, renamed or removed without
the stub fails here."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from engine import _core

STUB = Path(__file__).resolve().parents[1] / "engine" / "_core.pyi"
# pybind11's own plumbing, not the API.
IGNORED = {"_pybind11_conduit_v1_", "__init__", "__repr__", "__doc__", "__module__", "__dict__", "__weakref__",
           "__getstate__", "__setstate__"}  # the last two: pickle support (py::pickle), not API
# Names only some builds export, and the build that does: the stub names them always, and where the
# module has them they are held to the stub like every other name.
BUILD_DEPENDENT = {"CudaSsmModel": "NEXTICK_CUDA=ON (make core-cuda)"}


def _stub() -> ast.Module:
    return ast.parse(STUB.read_text())


def _public(names) -> set[str]:
    return {n for n in names if not n.startswith("_")}


def _stub_module_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return _public(names) - {"Records"}


def _stub_classes(tree: ast.Module) -> dict[str, dict[str, ast.FunctionDef]]:
    return {
        node.name: {f.name: f for f in node.body if isinstance(f, ast.FunctionDef)}
        for node in tree.body
        if isinstance(node, ast.ClassDef)
    }


def _runtime_params(obj) -> list[str] | None:
    """Parameter names from pybind11's docstring signature "name(self: T, a: int, *, b: float = 0) -> R"."""
    doc = getattr(obj, "__doc__", None) or ""
    m = re.match(r"^\s*\w+\((.*)\)\s*->", doc.splitlines()[0] if doc else "")
    if not m:
        return None
    params, depth, cur = [], 0, ""
    for ch in m.group(1):  # split on top-level commas only
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            params.append(cur)
            cur = ""
        else:
            cur += ch
    params.append(cur)
    names = [p.split(":")[0].split("=")[0].strip() for p in params if p.strip()]
    return [n for n in names if n not in ("self", "*")]


def _stub_params(f: ast.FunctionDef) -> list[str]:
    a = f.args
    return [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg != "self"]


def test_the_stub_names_every_module_level_export():
    runtime = _public(dir(_core))
    absent_here = set(BUILD_DEPENDENT) - runtime
    assert _stub_module_names(_stub()) - absent_here == runtime


def test_build_dependent_names_are_in_the_stub():
    """A name listed as build-dependent is still described: a stale entry would excuse a missing one."""
    assert set(BUILD_DEPENDENT) <= _stub_module_names(_stub())


@pytest.mark.parametrize("cls_name", sorted(n for n in dir(_core) if inspect.isclass(getattr(_core, n))))
def test_each_class_has_the_same_members_and_parameters(cls_name):
    cls = getattr(_core, cls_name)
    stub_classes = _stub_classes(_stub())
    assert cls_name in stub_classes
    stub = stub_classes[cls_name]
    runtime = {n: v for n, v in vars(cls).items() if n not in IGNORED}
    assert set(stub) - IGNORED == set(runtime), f"{cls_name}: stub and module disagree on members"
    for name, member in runtime.items():
        if isinstance(member, property):
            assert any(isinstance(d, ast.Name) and d.id == "property" for d in stub[name].decorator_list), name
            continue
        params = _runtime_params(getattr(cls, name))
        assert params is not None, f"{cls_name}.{name}: no signature in its docstring"
        assert _stub_params(stub[name]) == params, f"{cls_name}.{name}"
    if "__init__" in vars(cls) and "__init__" in stub:
        assert _stub_params(stub["__init__"]) == _runtime_params(cls.__init__)


def test_module_functions_have_the_same_parameters():
    stub = {f.name: f for f in _stub().body if isinstance(f, ast.FunctionDef)}
    for name in _public(dir(_core)):
        obj = getattr(_core, name)
        if callable(obj) and not inspect.isclass(obj):
            assert _stub_params(stub[name]) == _runtime_params(obj), name


def test_the_check_sees_a_missing_member():
    """The comparison is not vacuous: dropping a method from the stub is noticed."""
    text = STUB.read_text().replace("    def set_kernel(", "    def set_kernel_renamed(", 1)
    tree = ast.parse(text)
    assert "set_kernel" not in _stub_classes(tree)["SsmModel"]
    assert set(_stub_classes(tree)["SsmModel"]) - IGNORED != {n for n in vars(_core.SsmModel) if n not in IGNORED}
