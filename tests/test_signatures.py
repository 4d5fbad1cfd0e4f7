"""Signatures of the C extension: inspect.signature works on every public
callable of burstio._native (CPython's __text_signature__), and what a
signature says about positional and keyword arguments is what the C code
accepts.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import socket

import pytest

from burstio import _native, ports

P = inspect.Parameter
NOT_METHODS = ("getset_descriptor", "member_descriptor")


def native_types() -> list[type]:
    """Every type the module exports, and their C base types (SocketSetBase)."""
    seen: list[type] = []
    for name in dir(_native):
        value = getattr(_native, name)
        if isinstance(value, type):
            for cls in value.__mro__[:-1]:
                if cls not in seen:
                    seen.append(cls)
    return seen


def public_methods(cls: type) -> list[str]:
    return sorted(name for name, value in vars(cls).items()
                  if not name.startswith("_") and callable(value)
                  and type(value).__name__ not in NOT_METHODS)


def constructible(cls: type) -> bool:
    return "__new__" in vars(cls)


TYPES = native_types()
METHODS = [(cls, name) for cls in TYPES for name in public_methods(cls)]
FUNCTIONS = sorted(name for name in dir(_native)
                   if not name.startswith("_") and callable(getattr(_native, name))
                   and not isinstance(getattr(_native, name), type))


def test_every_type_and_function_is_covered():
    names = {cls.__name__ for cls in TYPES}
    assert {"PacketBatch", "UdpIo", "SocketSetBase", "UringSocketSet", "EpollSocketSet", "ZeroCopyIo",
            "ZeroCopyCompletion", "ZeroCopyPool", "ZeroCopyBuffer", "PortRegion", "PortClaim", "PortTx",
            "PortRx", "SwitchCore"} <= names
    assert {"probe_mmsg", "probe_uring", "setns", "attach_reuseport_cbpf", "register_uring_napi"} <= set(FUNCTIONS)


@pytest.mark.parametrize("cls,name", METHODS, ids=[f"{c.__name__}.{n}" for c, n in METHODS])
def test_method_signature(cls, name):
    sig = inspect.signature(getattr(cls, name))
    first = next(iter(sig.parameters.values()))
    assert first.name == "self" and first.kind is P.POSITIONAL_ONLY


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_signature(name):
    inspect.signature(getattr(_native, name))


@pytest.mark.parametrize("cls", [c for c in TYPES if constructible(c)], ids=lambda c: c.__name__)
def test_constructor_signature(cls):
    inspect.signature(cls)


def names(sig: inspect.Signature, *kinds) -> list[str]:
    return [p.name for p in sig.parameters.values() if p.kind in kinds]


def test_key_signatures():
    batch = inspect.signature(_native.PacketBatch)
    assert names(batch, P.POSITIONAL_OR_KEYWORD) == ["capacity", "slot_size"]
    assert names(batch, P.KEYWORD_ONLY) == ["slots"]
    recv = inspect.signature(_native.UdpIo.recv_batch)
    assert names(recv, P.POSITIONAL_OR_KEYWORD) == ["batch", "timeout"]
    send = inspect.signature(_native.UdpIo.send_batch)
    assert names(send, P.POSITIONAL_OR_KEYWORD) == ["batch", "start", "count"]
    assert names(send, P.KEYWORD_ONLY) == ["on_error"]
    put = inspect.signature(_native.PortTx.put)
    assert names(put, P.POSITIONAL_OR_KEYWORD) == ["payload", "dst", "src", "addr"]


def test_key_signatures_match_the_keywords_the_code_takes():
    b = _native.PacketBatch(capacity=4, slot_size=64, slots=2)
    assert (b.capacity, b.slot_size, b.slots) == (4, 64, 2)
    assert _native.PacketBatch(slots=None).slots == 64  # slots=None: as many as capacity
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        tx.connect(rx.getsockname())
        out = _native.PacketBatch(4, 64)
        out.append(b"one")
        out.append(b"two")
        assert _native.UdpIo(tx.fileno()).send_batch(batch=out, start=0, count=None, on_error="raise") == 2
        got = _native.PacketBatch(4, 64)
        assert _native.UdpIo(rx.fileno()).recv_batch(batch=got, timeout=1.0) >= 1
        assert bytes(got[0]) == b"one"
    a, b = ports.pipe(slots=4, slot_size=16)
    with a, b:
        assert _native.PortTx.put(a.tx, payload=b"x", dst=1, src=2, addr=("127.0.0.1", 9)) == 2
        a.tx.sync()
        assert b.rx.wait(1, timeout=1.0) == 1
        assert (b.rx.dst(0), b.rx.src(0), b.rx.addr(0)) == (1, 2, ("127.0.0.1", 9))


# ---- every method's signature against the C argument parsing ------------------


class Completion(_native.ZeroCopyCompletion):
    pass


@pytest.fixture(scope="module")
def instances():
    """One live object of every type, keyed by type."""
    objs: dict[type, object] = {}
    with contextlib.ExitStack() as stack:
        rx = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        tx = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        rx.bind(("127.0.0.1", 0))
        tx.connect(rx.getsockname())
        objs[_native.PacketBatch] = _native.PacketBatch(4, 64)
        objs[_native.UdpIo] = _native.UdpIo(tx.fileno())
        objs[_native.Pacer] = pacer = _native.Pacer(tx.fileno())
        stack.callback(pacer.close)
        objs[_native.EpollSocketSet] = _native.EpollSocketSet(4)
        with contextlib.suppress(OSError):
            objs[_native.UringSocketSet] = _native.UringSocketSet(4, 64, 2048)
        pool = _native.ZeroCopyPool(2, 4096)
        io = _native.ZeroCopyIo(tx.fileno(), pool, 0, Completion)
        objs[_native.ZeroCopyPool] = pool
        objs[_native.ZeroCopyIo] = io
        objs[_native.ZeroCopyBuffer] = io.acquire()
        buf = io.acquire()
        buf.write(b"x")
        objs[_native.ZeroCopyCompletion] = io.send(buf, 1)
        a, b = ports.pipe(slots=4, slot_size=16)
        stack.callback(a.close)
        stack.callback(b.close)
        objs[_native.PortRegion] = a.region
        objs[_native.PortClaim] = a.tx.port
        objs[_native.PortTx] = a.tx
        objs[_native.PortRx] = a.rx
        objs[_native.SwitchCore] = _native.SwitchCore(os.eventfd(0))
        objs[_native.UdpFrames] = _native.UdpFrames(4)
        try:
            umem = _native.Umem(64, 2048, 0)  # AF_XDP needs CAP_NET_RAW
            objs[_native.Umem] = umem
            xsk = _native.XskSocket(umem, 1, 0, 64, 64, 64, 64)  # made, not bound
            stack.callback(xsk.close)
            objs[_native.XskSocket] = xsk
            objs[_native.NicCore] = stack.enter_context(nic_core())
        except OSError as e:
            NO_INSTANCE[_native.Umem] = NO_INSTANCE[_native.XskSocket] = f"AF_XDP refused: {e}"
            NO_INSTANCE[_native.NicCore] = f"AF_XDP refused: {e}"
        yield objs
        io.close(0)


@contextlib.contextmanager
def nic_core():
    """A NicCore over an XskSocket made but not bound (on lo) and a region on its frames."""
    from burstio._ports_nic import _pool_memfd, _pool_region

    pool_fd = _pool_memfd(64, 2048)
    try:
        umem = _native.Umem(64, 2048, 0, pool_fd)
        xsk = _native.XskSocket(umem, 1, 0, 64, 64, 64, 64)

        class _U:  # what _pool_region reads of a burstio.xdp.Umem
            frames, frame_size, headroom = 64, 2048, 0

        region = _pool_region(4, 1792, 2, pool_fd, _U())  # type: ignore[arg-type]
        region.use_frames(umem, False, True)
        near, far = _native.PortClaim(region, 0), _native.PortClaim(region, 1)
        core = _native.NicCore(xsk, _native.PortTx(near), _native.PortRx(near), _native.PortRx(far),
                               _native.PortTx(far))
    finally:
        os.close(pool_fd)
    yield core
    core.close()
    xsk.close()


def method_cases():
    for cls, name in METHODS:
        owner = cls if cls.__name__ != "SocketSetBase" else _native.EpollSocketSet
        yield pytest.param(cls, owner, name, id=f"{cls.__name__}.{name}")


#: why the fixture has no object of a type
NO_INSTANCE: dict[type, str] = {
    _native.UringSocketSet: "io_uring refused",
    _native.XskLease: "only an AF_XDP receive makes one (tests/test_xdp_xsk.py receives into leases)",
}


def bound(instances, cls, owner, name):
    """The C method cls.name bound to the live `owner` object (not a Python
    subclass's override)."""
    if owner not in instances:
        pytest.skip(f"no {owner.__name__} here: {NO_INSTANCE.get(owner, 'not made')}")
    return vars(cls)[name].__get__(instances[owner])


def too_many(sig: inspect.Signature) -> int:
    return len(names(sig, P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)) + 1


@pytest.mark.parametrize("cls,owner,name", list(method_cases()))
def test_positional_arguments_as_signed(instances, cls, owner, name):
    method = bound(instances, cls, owner, name)
    sig = inspect.signature(method)
    with pytest.raises(TypeError, match=r"takes (at most|exactly|no) .*argument"):
        method(*[None] * too_many(sig))


@pytest.mark.parametrize("cls,owner,name", list(method_cases()))
def test_keywords_as_signed(instances, cls, owner, name):
    method = bound(instances, cls, owner, name)
    sig = inspect.signature(method)
    takes_keywords = bool(names(sig, P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY))
    expect = r"(unexpected|invalid) keyword argument" if takes_keywords else "takes no keyword arguments"
    required = [p for p in sig.parameters.values()
                if p.default is P.empty and p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    with pytest.raises(TypeError, match=expect):
        method(*[None] * len(required), not_an_argument=1)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_module_functions_as_signed(name):
    func = getattr(_native, name)
    sig = inspect.signature(func)
    assert not names(sig, P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)  # positional only
    with pytest.raises(TypeError, match=r"takes (at most|exactly|no) .*argument|function takes"):
        func(*[None] * too_many(sig))
    with pytest.raises(TypeError, match="takes no keyword arguments"):
        func(not_an_argument=1)
