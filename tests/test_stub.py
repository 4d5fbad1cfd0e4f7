"""The type stub of the C extension (burstio/_native.pyi) against the built module.

The stub ships next to the module (with py.typed); these tests read the
installed copy with ``ast`` and compare it with what ``burstio._native``
really has: every public name, every method and attribute of every type.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import burstio
import burstio._native as native

PACKAGE = Path(burstio.__file__).parent
STUB = PACKAGE / "_native.pyi"

#: constants the C side is about to export: declared in the stub already, so
#: Python code can move to them; until then they may be missing at runtime
NOT_YET_EXPORTED = frozenset({
    "SOL_UDP", "UDP_SEGMENT", "UDP_GRO", "SO_TIMESTAMPNS", "SCM_TIMESTAMPNS", "SO_RXQ_OVFL", "SO_MEMINFO",
    "SK_MEMINFO_DROPS", "SK_MEMINFO_VARS", "SO_BUSY_POLL", "SO_INCOMING_NAPI_ID", "SO_ZEROCOPY", "MSG_ZEROCOPY",
    "SO_PREFER_BUSY_POLL", "SO_BUSY_POLL_BUDGET", "SO_RCVBUFFORCE", "SO_SNDBUFFORCE", "SO_NO_CHECK", "AF_XDP",
    "EPIOCSPARAMS", "EPIOCGPARAMS", "SO_ATTACH_REUSEPORT_CBPF", "IP_PKTINFO", "IPV6_RECVPKTINFO", "IPV6_PKTINFO",
    "IP_RECVTOS", "IP_TOS", "IPV6_RECVTCLASS", "IPV6_TCLASS", "IP_MTU_DISCOVER", "IPV6_MTU_DISCOVER",
    "IP_PMTUDISC_DO", "IPV6_PMTUDISC_DO", "IP_MTU", "IPV6_MTU", "SO_TXTIME", "SCM_TXTIME",
})

#: buffer-protocol dunders the stub declares for type checkers; the runtime
#: types have them as methods from Python 3.12 on
BUFFER_DUNDERS = frozenset({"__buffer__", "__release_buffer__"})


def _parse() -> ast.Module:
    return ast.parse(STUB.read_text(), filename=str(STUB))


def _decorators(node: ast.ClassDef | ast.FunctionDef) -> set[str]:
    names = set()
    for dec in node.decorator_list:
        d = dec.func if isinstance(dec, ast.Call) else dec
        if isinstance(d, ast.Name):
            names.add(d.id)
        elif isinstance(d, ast.Attribute):
            names.add(d.attr)
    return names


def _module_names(tree: ast.Module) -> dict[str, ast.stmt]:
    """Names the stub defines at module level (functions, classes, constants, aliases)."""
    out: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            out[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = node
        elif isinstance(node, ast.Assign):
            out.update((t.id, node) for t in node.targets if isinstance(t, ast.Name))
    return out


def _classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def _members(cls: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> set[str]:
    """Names a stub class declares, with those of its base classes in the stub."""
    names: set[str] = set()
    for node in cls.body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in classes:
            names |= _members(classes[base.id], classes)
    return names


def _type_check_only(tree: ast.Module) -> set[str]:
    return {name for name, c in _classes(tree).items() if "type_check_only" in _decorators(c)}


def _runtime_public() -> set[str]:
    return {n for n in dir(native) if not n.startswith("_")}


def _runtime_types() -> dict[str, type]:
    """Every type of the extension by name: the module's, and those only
    reachable through an object (the stub marks them @type_check_only)."""
    out = {n: v for n, v in vars(native).items() if isinstance(v, type)}
    batch = native.PacketBatch(1, 1)
    for t in (native.UringSocketSet.__base__, type(memoryview(batch).obj), type(batch.lengths.obj)):
        out[t.__name__] = t
    return out


def _is_method(value: object) -> bool:
    kinds = ("method_descriptor", "wrapper_descriptor", "builtin_function_or_method", "classmethod_descriptor")
    return type(value).__name__ in kinds


def _is_attribute(value: object) -> bool:
    return type(value).__name__ in ("member_descriptor", "getset_descriptor")


def test_the_stub_and_py_typed_ship_with_the_package():
    assert STUB.is_file()
    assert (PACKAGE / "py.typed").is_file()


def test_every_runtime_name_is_in_the_stub():
    declared = _module_names(_parse())
    missing = sorted(_runtime_public() - set(declared))
    assert not missing, f"burstio._native has names the stub lacks: {missing}"


def test_every_stub_name_is_in_the_module():
    tree = _parse()
    public = {n for n in _module_names(tree) if not n.startswith("_")}
    absent = public - _runtime_public() - _type_check_only(tree)
    unexpected = sorted(absent - NOT_YET_EXPORTED)
    assert not unexpected, f"the stub declares names burstio._native does not have: {unexpected}"


def test_the_coming_constants_are_declared_ints():
    tree = _parse()
    declared = _module_names(tree)
    assert not NOT_YET_EXPORTED - set(declared)
    for name in NOT_YET_EXPORTED:
        node = declared[name]
        assert isinstance(node, ast.AnnAssign), name
        assert ast.unparse(node.annotation) in ("int", "Final[int]"), name
        if hasattr(native, name):  # exported by now: it is what the stub says
            assert type(getattr(native, name)) is int, name


def test_type_check_only_classes_are_real_types_without_a_module_name():
    """SocketSetBase, Memory and _Array exist only behind other objects."""
    only = _type_check_only(_parse())
    assert only == {"SocketSetBase", "Memory", "_Array"}
    types = _runtime_types()
    for name in only:
        assert name in types, name
        assert not hasattr(native, name), name


def test_every_runtime_type_is_a_stub_class():
    classes = _classes(_parse())
    missing = sorted(set(_runtime_types()) - set(classes))
    assert not missing, f"types the stub has no class for: {missing}"


@pytest.mark.parametrize("name", sorted(_runtime_types()))
def test_every_method_and_attribute_of_a_type_is_in_its_stub_class(name: str):
    classes = _classes(_parse())
    declared = _members(classes[name], classes)
    runtime = _runtime_types()[name]
    methods = {a for a, v in vars(runtime).items() if _is_method(v)}
    attributes = {a for a, v in vars(runtime).items() if _is_attribute(v)}
    assert not methods - declared, f"{name}: methods the stub lacks: {sorted(methods - declared)}"
    assert not attributes - declared, f"{name}: attributes the stub lacks: {sorted(attributes - declared)}"


@pytest.mark.parametrize("name", sorted(_runtime_types()))
def test_every_stub_member_exists_on_the_type(name: str):
    classes = _classes(_parse())
    runtime = _runtime_types()[name]
    extra = {m for m in _members(classes[name], classes) if not hasattr(runtime, m)}
    if sys.version_info < (3, 12):
        extra -= BUFFER_DUNDERS
    assert not extra, f"{name}: the stub declares what the type does not have: {sorted(extra)}"


def test_constructors_are_declared_where_the_type_has_one():
    classes = _classes(_parse())
    for name, runtime in _runtime_types().items():
        has_new = "__new__" in vars(runtime)
        declares = "__new__" in _members(classes[name], classes) or "__init__" in _members(classes[name], classes)
        assert has_new == declares, f"{name}: runtime __new__ {has_new}, stub constructor {declares}"
