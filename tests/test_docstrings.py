"""Every public class, function, method and property has a docstring.

The API reference on the docs site is made from the docstrings (Sphinx autodoc,
docs/*.md), so a public member without one is a hole in the reference. The
public surface is what ``__all__`` of ``burstio`` and of each public module
(no part of its name starts with ``_``) exports; of a class, every member a
user reaches by a public name (inherited ones included, where burstio defines
them).
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator

import burstio

#: C descriptors of the extension's types: methods, getters, struct members
_C_MEMBERS = ("method_descriptor", "getset_descriptor", "member_descriptor", "classmethod_descriptor")


def public_modules() -> Iterator[object]:
    yield burstio
    for info in pkgutil.walk_packages(burstio.__path__, "burstio."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            yield importlib.import_module(info.name)


def _ours(obj: object) -> bool:
    return (getattr(obj, "__module__", None) or "").startswith("burstio")


def _doc(obj: object) -> str:
    if isinstance(obj, (classmethod, staticmethod)):
        obj = obj.__func__
    doc = getattr(obj, "__doc__", None) or getattr(getattr(obj, "__wrapped__", None), "__doc__", None)
    return (doc or "").strip()


def _is_member(value: object) -> bool:
    return (inspect.isroutine(value) or isinstance(value, (property, classmethod, staticmethod))
            or type(value).__name__ in _C_MEMBERS)


def surface() -> dict[str, str]:
    """{qualified name where it is defined: its docstring} of every public class,
    function, method and property."""
    out: dict[str, str] = {}
    seen: set[int] = set()
    for module in public_modules():
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if id(obj) in seen or not _ours(obj) or not (inspect.isclass(obj) or callable(obj)):
                continue
            seen.add(id(obj))
            qual = getattr(obj, "__qualname__", name)
            out[f"{obj.__module__}.{qual}"] = _doc(obj)
            if not inspect.isclass(obj):
                continue
            for member in dir(obj):
                if member.startswith("_"):
                    continue
                owner = next((k for k in obj.__mro__ if member in vars(k)), None)
                value = vars(owner)[member] if owner is not None else None
                if owner is None or not _ours(owner) or not _is_member(value):
                    continue  # inherited from outside burstio (asyncio, aioquic), or data
                out[f"{owner.__module__}.{owner.__qualname__}.{member}"] = _doc(value)
    return out


SURFACE = surface()


def test_the_surface_is_found():
    assert "burstio.ports.Port.slots" in SURFACE and "burstio._zerocopy.ZeroCopySender.pool" in SURFACE
    assert len(SURFACE) > 300


def test_every_public_member_has_a_docstring():
    missing = sorted(name for name, doc in SURFACE.items() if not doc)
    assert not missing, "public members without a docstring:\n" + "\n".join(missing)
