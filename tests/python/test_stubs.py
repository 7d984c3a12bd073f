"""The package is typed (py.typed) and apo/_core.pyi names exactly what the compiled module has:
every function, class, member and constant, and the parameters of each function and method."""

import ast
import inspect
import pathlib
import re

import apo
from apo import _core

PACKAGE = pathlib.Path(apo.__file__).parent


def stub_tree():
    return ast.parse((PACKAGE / "_core.pyi").read_text())


def public(names):
    return {n for n in names if not n.startswith("_") or n in ("__init__", "__enter__", "__exit__", "__eq__")}


def stub_names(body):
    names = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.AnnAssign):
            names[node.target.id] = node
    return names


def signature_names(doc_line):
    """Parameter names of a pybind11 signature line 'name(a: T, *, b: U = x) -> R'."""
    inner = doc_line[doc_line.index("(") + 1 : doc_line.rindex(") ->")]
    depth, current, parts = 0, "", []
    for ch in inner:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    names = []
    for part in (p.strip() for p in parts if p.strip()):
        names.append(re.split(r"[:=]", part)[0].strip())
    return names


def stub_params(node):
    a = node.args
    names = [x.arg for x in a.posonlyargs + a.args]
    if a.vararg:
        names.append("*" + a.vararg.arg)
    elif a.kwonlyargs:
        names.append("*")
    names += [x.arg for x in a.kwonlyargs]
    if a.kwarg:
        names.append("**" + a.kwarg.arg)
    return names


def test_the_package_is_typed():
    assert (PACKAGE / "py.typed").exists()


def test_the_stub_names_what_the_module_has():
    stubs = stub_names(stub_tree().body)
    module = public(n for n in dir(_core) if n != "__version__") | {"__version__"}
    assert set(stubs) == module
    for name, node in stubs.items():
        if not isinstance(node, ast.ClassDef):
            continue
        cls = getattr(_core, name)
        assert isinstance(cls, type)
        if issubclass(cls, BaseException):
            bases = [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in node.bases]
            real = [b.__name__ if b.__module__ in ("builtins", "apo") else f"{b.__module__}.{b.__name__}" for b in cls.__bases__]
            assert bases == real, name
            continue
        members = stub_names(node.body)
        real = public(vars(cls))
        if not (cls.__init__.__doc__ or "").startswith("__init__("):
            real.discard("__init__")  # no constructor: made by apo only
        assert set(members) == real, name


def test_the_stub_parameters_match():
    stubs = stub_names(stub_tree().body)
    checked = 0
    for name, node in stubs.items():
        targets = []
        if isinstance(node, ast.FunctionDef):
            targets.append((node, getattr(_core, name), False))
        elif isinstance(node, ast.ClassDef):
            cls = getattr(_core, name)
            for member in node.body:
                if isinstance(member, ast.FunctionDef) and not any(
                    isinstance(d, ast.Name) and d.id == "property" for d in member.decorator_list
                ):
                    if member.name in ("__eq__", "__exit__", "__enter__") or issubclass(cls, BaseException):
                        continue
                    targets.append((member, getattr(cls, member.name), True))
        for stub, real, _ in targets:
            line = next(l for l in (real.__doc__ or "").splitlines() if "(" in l and "->" in l)
            real_names = [n.lstrip("*") for n in signature_names(line) if n != "*"]
            stub_names_ = [n.lstrip("*") for n in stub_params(stub) if n != "*"]
            assert real_names == stub_names_, (stub.name, line)
            checked += 1
    assert checked > 20
