"""PacketBatch: building, addressing, metadata views, exact error wording."""
from __future__ import annotations

import gc
import ipaddress
import re
import socket
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import burstio
from burstio import PacketBatch

SETTINGS = settings(max_examples=60, deadline=None)


def contents(batch: PacketBatch) -> list[bytes]:
    return [bytes(batch[i]) for i in range(len(batch))]


# ---- construction -------------------------------------------------------------


def test_defaults():
    b = PacketBatch()
    assert (b.capacity, b.slot_size, b.slots, len(b)) == (64, 2048, 64, 0)
    assert repr(b) == "<PacketBatch 0/64 datagrams, 64 slots x 2048 B>"
    assert b.send_errors() == [] and b.addresses() == []


def test_slots_default_to_capacity_and_may_be_fewer():
    b = PacketBatch(8, 100, slots=2)
    assert (b.capacity, b.slots, b.slot_size) == (8, 2, 100)
    assert len(memoryview(b)) == 200
    assert len(memoryview(b.lengths)) == 8  # metadata for every entry


@pytest.mark.parametrize("args,kwargs,msg", [
    ((0,), {}, "capacity must be between 1 and 1048576, got 0"),
    ((-5,), {}, "capacity must be between 1 and 1048576, got -5"),
    (((1 << 20) + 1,), {}, "capacity must be between 1 and 1048576, got 1048577"),
    ((4, 0), {}, "slot_size must be between 1 and 16777216, got 0"),
    ((4, (16 << 20) + 1), {}, "slot_size must be between 1 and 16777216, got 16777217"),
    ((4, 64), {"slots": 0}, "slots must be between 1 and 4, got 0"),
    ((4, 64), {"slots": 5}, "slots must be between 1 and 4, got 5"),
    ((1 << 20, 16 << 20), {}, "slots x slot_size is 17592186044416 bytes; the limit is 4294967296 (4 GiB"),
    ((1024, 16 << 20), {"slots": 257}, "slots x slot_size is 4311744512 bytes; the limit is 4294967296"),
])
def test_construction_limits(args, kwargs, msg):
    with pytest.raises(ValueError, match=re.escape(msg)):
        PacketBatch(*args, **kwargs)


def test_construction_argument_types():
    with pytest.raises(TypeError):
        PacketBatch(4, 64, 2)  # slots is keyword-only
    with pytest.raises(TypeError):
        PacketBatch("4")


def test_constants():
    assert burstio.MAX_UDP_PAYLOAD == 65507
    assert burstio.GRO_SLOT_MIN == 65535
    flags = [burstio.FLAG_TRUNCATED, burstio.FLAG_GRO, burstio.FLAG_COALESCED, burstio.FLAG_SEND_ERROR]
    assert all(f and f & (f - 1) == 0 for f in flags)  # one bit each
    assert len(set(flags)) == 4


# ---- append ---------------------------------------------------------------------


def test_append_copies_and_returns_index():
    b = PacketBatch(4, 16)
    src = bytearray(b"hello")
    assert b.append(src) == 0
    assert b.append(memoryview(b"world!")) == 1
    assert b.append(np.frombuffer(b"np", dtype=np.uint8)) == 2
    src[0:5] = b"HELLO"  # a copy was taken
    assert contents(b) == [b"hello", b"world!", b"np"]
    assert len(b) == 3
    assert memoryview(b.offsets)[:3].tolist() == [0, 16, 32]
    assert memoryview(b.lengths)[:3].tolist() == [5, 6, 2]
    assert b.addresses() == [None, None, None]


def test_append_errors_leave_the_batch_unchanged():
    b = PacketBatch(2, 10)
    b.append(b"a")
    with pytest.raises(ValueError, match=re.escape("payload of 11 bytes does not fit a 10-byte slot")):
        b.append(bytes(11))
    with pytest.raises(TypeError, match=re.escape("payload must be a bytes-like object, got str")):
        b.append("text")
    with pytest.raises(TypeError, match=re.escape("address must be a tuple (host, port), got str")):
        b.append(b"x", "127.0.0.1")
    assert contents(b) == [b"a"]
    assert b.append(bytes(10)) == 1  # exactly a slot is fine
    with pytest.raises(ValueError, match=re.escape("batch is full: capacity is 2 datagrams")):
        b.append(b"")
    assert len(b) == 2


def test_append_limited_by_slots():
    b = PacketBatch(4, 8, slots=2)
    b.append(b"1")
    b.append(b"2")
    with pytest.raises(ValueError, match=re.escape("batch is full: all 2 slots are used")):
        b.append(b"3")


def test_clear_keeps_memory_and_restarts():
    b = PacketBatch(2, 8)
    b.append(b"one", ("127.0.0.1", 1))
    b.append(b"two")
    arena = memoryview(b)
    b.clear()
    assert len(b) == 0 and b.addresses() == []
    assert b.append(b"three") == 0
    assert b.offsets[0] == 0
    assert bytes(arena[:5]) == b"three"
    assert b.addr(0) is None  # the old address went with clear()


# ---- add_slices -------------------------------------------------------------------


def test_add_slices_is_zero_copy():
    buf = bytearray(b"abcdefghij")
    b = PacketBatch(8, 4)  # slot size does not limit slices
    assert b.add_slices(buf, 4) == 3
    assert contents(b) == [b"abcd", b"efgh", b"ij"]
    buf[0] = ord("X")
    buf[9] = ord("Z")
    assert contents(b) == [b"Xbcd", b"efgh", b"iZ"]
    assert memoryview(b.offsets)[:3].tolist() == [0, 4, 8]


def test_add_slices_with_lengths_and_address():
    buf = b"aaabbbbbcc"
    b = PacketBatch(8, 4)
    assert b.add_slices(buf, lengths=[3, 0, 5, 2], addr=("::1", 7)) == 4
    assert contents(b) == [b"aaa", b"", b"bbbbb", b"cc"]
    assert b.addresses() == [("::1", 7, 0, 0)] * 4
    # shorter lengths than the buffer are fine; more entries from the same buffer
    assert b.add_slices(buf, lengths=np.array([1, 2])) == 2
    assert contents(b)[4:] == [b"a", b"aa"]


def test_add_slices_keeps_the_buffer_alive():
    b = PacketBatch(4, 4)
    b.add_slices(bytes(range(10)), 5)
    gc.collect()
    assert contents(b) == [bytes(range(5)), bytes(range(5, 10))]


def test_add_slices_of_a_multidimensional_array():
    arr = np.arange(12, dtype=np.uint16).reshape(3, 4)
    b = PacketBatch(8, 4)
    assert b.add_slices(arr, 8) == 3
    assert contents(b)[0] == arr[0].tobytes()
    arr[2, 3] = 0xFFFF
    assert contents(b)[2] == arr[2].tobytes()


@pytest.mark.parametrize("call,exc,msg", [
    (lambda b: b.add_slices(b"abc"), TypeError, "add_slices() needs exactly one of segment_size or lengths"),
    (lambda b: b.add_slices(b"abc", 1, lengths=[1]), TypeError,
     "add_slices() needs exactly one of segment_size or lengths"),
    (lambda b: b.add_slices(b"abc", 0), ValueError, "segment_size must be between 1 and 65507, got 0"),
    (lambda b: b.add_slices(b"abc", 65508), ValueError, "segment_size must be between 1 and 65507, got 65508"),
    (lambda b: b.add_slices(b"abc", lengths=[1, -1]), ValueError, "lengths[1] must be between 0 and 65507, got -1"),
    (lambda b: b.add_slices(bytes(70000), lengths=[65508]), ValueError,
     "lengths[0] must be between 0 and 65507, got 65508"),
    (lambda b: b.add_slices(b"0123456789", lengths=[4, 4, 4]), ValueError,
     "lengths run past the end of the 10-byte buffer at lengths[2]"),
    (lambda b: b.add_slices(b"abc", lengths=5), TypeError, "lengths must be a sequence of integers"),
    (lambda b: b.add_slices(b"abcdefg", 2), ValueError,
     "batch is full: 4 slices do not fit the 3 free entries of a 3-entry batch"),
    (lambda b: b.add_slices(42, 2), TypeError, "buffer must be a bytes-like object, got int"),
    (lambda b: b.add_slices(memoryview(bytearray(8))[::2], 2), ValueError, "buffer must be C-contiguous"),
    (lambda b: b.add_slices(b"abc", 1, addr=("localhost", 1)), ValueError,
     "address host must be a numeric IPv4 or IPv6 address, got 'localhost'"),
])
def test_add_slices_errors(call, exc, msg):
    b = PacketBatch(3, 16)
    with pytest.raises(exc, match=re.escape(msg)):
        call(b)
    assert len(b) == 0
    assert b.append(b"usable") == 0  # a failed add_slices leaves no buffer attached


def test_add_slices_and_append_do_not_mix():
    b = PacketBatch(8, 16)
    b.append(b"copied")
    with pytest.raises(ValueError, match=re.escape("batch holds appended datagrams; call clear() before add_slices()")):
        b.add_slices(b"abc", 1)
    b.clear()
    buf = b"abcdef"
    b.add_slices(buf, 3)
    with pytest.raises(ValueError, match=re.escape(
            "batch points into an external buffer (add_slices); call clear() before append()")):
        b.append(b"x")
    with pytest.raises(ValueError, match=re.escape("batch already points into another buffer; call clear() first")):
        b.add_slices(b"other", 1)
    assert contents(b) == [b"abc", b"def"]
    b.clear()
    assert b.append(b"x") == 0


# ---- keep ----------------------------------------------------------------------------


def _five() -> PacketBatch:
    b = PacketBatch(8, 8)
    for i in range(5):
        b.append(bytes([65 + i]), (f"10.0.0.{i}", 1000 + i))
    return b


def test_keep_with_bytearray():
    b = _five()
    assert b.keep(bytearray([1, 0, 1, 1, 0])) == 3
    assert contents(b) == [b"A", b"C", b"D"]
    assert b.addresses() == [("10.0.0.0", 1000), ("10.0.0.2", 1002), ("10.0.0.3", 1003)]
    assert memoryview(b.lengths)[:3].tolist() == [1, 1, 1]


def test_keep_with_numpy_bool_and_longer_mask():
    b = _five()
    mask = np.array([False, True, False, True, True, True, True, True])  # extra items ignored
    assert b.keep(mask) == 3
    assert contents(b) == [b"B", b"D", b"E"]
    assert b.keep(np.zeros(3, dtype=np.uint8)) == 0
    assert len(b) == 0


def test_keep_numpy_int_mask_is_read_per_item():
    """A numpy integer mask with wider items: items, not bytes, decide (or
    the mask is refused) — never a silently wrong selection."""
    b = _five()
    mask = np.array([1, 0, 1, 0, 1], dtype=np.int32)
    try:
        kept = b.keep(mask)
    except (TypeError, ValueError):
        assert len(b) == 5
    else:
        assert kept == 3
        assert contents(b) == [b"A", b"C", b"E"]


def test_keep_errors():
    b = _five()
    with pytest.raises(ValueError, match=re.escape("mask has 2 items but the batch holds 5 datagrams")):
        b.keep(b"\1\1")
    with pytest.raises(TypeError, match=re.escape("mask must be a bytes-like object, got list")):
        b.keep([1, 1, 1, 1, 1])
    assert len(b) == 5


# ---- addresses -----------------------------------------------------------------------


def test_set_addr_addr_addresses():
    b = PacketBatch(4, 8)
    b.append(b"a")
    b.append(b"b", ("127.0.0.1", 80))
    assert b.addr(0) is None and b.addr(1) == ("127.0.0.1", 80)
    b.set_addr(0, ("::1", 5))
    assert b.addr(0) == ("::1", 5, 0, 0)
    b.set_addr(-1, ("fe80::1", 9, 0xABCDE, 3))
    assert b.addr(1) == ("fe80::1", 9, 0xABCDE, 3)
    assert b.addresses() == [("::1", 5, 0, 0), ("fe80::1", 9, 0xABCDE, 3)]
    b.set_addr(1, None)
    assert b.addresses() == [("::1", 5, 0, 0), None]
    assert b.addr(-2) == ("::1", 5, 0, 0)


def test_address_index_errors():
    b = PacketBatch(4, 8)
    b.append(b"a")
    msg = "batch index out of range (the batch holds 1 datagrams)"
    with pytest.raises(IndexError, match=re.escape(msg)):
        b.addr(1)
    with pytest.raises(IndexError, match=re.escape(msg)):
        b.addr(-2)
    with pytest.raises(IndexError, match=re.escape(msg)):
        b.set_addr(3, ("127.0.0.1", 1))


def test_raw_names_hold_sockaddrs():
    b = PacketBatch(2, 8)
    b.append(b"", ("1.2.3.4", 0x1234))
    b.append(b"", ("::1", 0x5678))
    names = np.asarray(b.names)
    assert names.shape == (2, 28) and names.dtype == np.uint8
    assert int.from_bytes(names[0, :2].tobytes(), "little") == 2       # AF_INET
    assert names[0, 2:8].tobytes() == bytes([0x12, 0x34, 1, 2, 3, 4])   # port, address
    assert int.from_bytes(names[1, :2].tobytes(), "little") == 10      # AF_INET6
    assert names[1, 2:4].tobytes() == bytes([0x56, 0x78])
    assert names[1, 8:24].tobytes() == ipaddress.ip_address("::1").packed


BAD_ADDRESSES = [
    ("127.0.0.1", TypeError, "address must be a tuple (host, port), got str"),
    (["127.0.0.1", 1], TypeError, "address must be a tuple (host, port), got list"),
    (("127.0.0.1",), TypeError,
     "address must be (host, port) or (host, port, flowinfo, scope_id), got a tuple of 1 items"),
    (("::1", 1, 0), TypeError,
     "address must be (host, port) or (host, port, flowinfo, scope_id), got a tuple of 3 items"),
    ((b"127.0.0.1", 1), TypeError, "address host must be str, got bytes"),
    ((None, 1), TypeError, "address host must be str, got NoneType"),
    (("localhost", 1), ValueError, "address host must be a numeric IPv4 or IPv6 address, got 'localhost'"),
    (("256.1.1.1", 1), ValueError, "address host must be a numeric IPv4 or IPv6 address, got '256.1.1.1'"),
    (("", 1), ValueError, "address host must be a numeric IPv4 or IPv6 address, got ''"),
    (("127.0.0.1", "80"), TypeError, "address port must be int, got str"),
    (("127.0.0.1", 80.0), TypeError, "address port must be int, got float"),
    (("127.0.0.1", 65536), ValueError, "address port must be between 0 and 65535, got 65536"),
    (("127.0.0.1", -1), ValueError, "address port must be between 0 and 65535, got -1"),
    (("127.0.0.1", 1 << 70), ValueError, f"address port must be between 0 and 65535, got {1 << 70}"),
    (("127.0.0.1", 1, 0, 0), ValueError, "a 4-item address is IPv6, but host '127.0.0.1' is IPv4"),
    (("::1", 1, 1 << 20, 0), ValueError, "address flowinfo must be between 0 and 1048575, got 1048576"),
    (("::1", 1, "0", 0), TypeError, "address flowinfo must be int, got str"),
    (("::1", 1, 0, 1 << 32), ValueError, "address scope_id must be between 0 and 4294967295, got 4294967296"),
    (("::1", 1, 0, -1), ValueError, "address scope_id must be between 0 and 4294967295, got -1"),
]


@pytest.mark.parametrize("addr,exc,msg", BAD_ADDRESSES, ids=[repr(a[0]) for a in BAD_ADDRESSES])
@pytest.mark.parametrize("entry", ["append", "set_addr", "add_slices"])
def test_address_parsing_errors(entry, addr, exc, msg):
    b = PacketBatch(4, 8)
    if entry == "set_addr":
        b.append(b"x", ("127.0.0.1", 1))
    with pytest.raises(exc, match=re.escape(msg)):
        if entry == "append":
            b.append(b"x", addr)
        elif entry == "set_addr":
            b.set_addr(0, addr)
        else:
            b.add_slices(b"xy", 1, addr=addr)
    if entry == "set_addr":
        assert b.addr(0) == ("127.0.0.1", 1)
    else:
        assert len(b) == 0


@pytest.mark.parametrize("addr,exc,msg", BAD_ADDRESSES[:8], ids=[repr(a[0]) for a in BAD_ADDRESSES[:8]])
def test_send_segments_address_errors_match_across_backends(udp_variant, addr, exc, msg):
    with burstio.BurstSocket(**udp_variant.kwargs) as s:
        with pytest.raises(exc, match=re.escape(msg)):
            s.send_segments(b"abc", 1, addr)
        assert s.counters["tx_datagrams"] == 0


# ---- views -------------------------------------------------------------------------------


def test_metadata_arrays_are_writable_views():
    b = PacketBatch(4, 16)
    b.append(b"0123456789", ("127.0.0.1", 1))
    b.append(b"abc")
    expect = {"offsets": np.uint64, "lengths": np.uint32, "flags": np.uint32, "segment_sizes": np.uint32,
              "timestamps": np.int64, "sockets": np.int32, "errnos": np.int32}
    for name, dtype in expect.items():
        arr = np.asarray(getattr(b, name))
        assert arr.dtype == dtype and arr.shape == (4,), name
        assert arr.flags.writeable, name
    lengths = np.asarray(b.lengths)
    lengths[0] = 4
    assert bytes(b[0]) == b"0123"
    offsets = np.asarray(b.offsets)
    offsets[1] = 2
    assert bytes(b[1]) == b"234"
    flags = np.asarray(b.flags)
    flags[0] = burstio.FLAG_SEND_ERROR
    np.asarray(b.errnos)[0] = 99
    assert b.send_errors() == [(0, 99)]
    np.asarray(b.timestamps)[1] = 123
    assert memoryview(b.timestamps)[1] == 123
    np.asarray(b.sockets)[1] = 7
    assert b.sockets[1] == 7


def test_views_keep_the_batch_alive():
    b = PacketBatch(2, 8)
    b.append(b"abc")
    lengths = np.asarray(b.lengths)
    item = b[0]
    del b
    gc.collect()
    assert lengths[0] == 3
    assert bytes(item) == b"abc"


def test_indexing():
    b = PacketBatch(4, 8)
    for p in (b"a", b"bb", b"ccc"):
        b.append(p)
    assert bytes(b[-1]) == b"ccc" and bytes(b[-3]) == b"a"
    assert isinstance(b[0], memoryview)
    for i in (3, -4, 100):
        with pytest.raises(IndexError, match="batch index out of range"):
            b[i]
    assert [bytes(x) for x in b] == [b"a", b"bb", b"ccc"]  # iteration stops at len
    b[1][0] = ord("B")  # payloads in the arena are writable in place
    assert bytes(b[1]) == b"Bb"


def test_memoryview_of_batch_is_the_arena():
    b = PacketBatch(3, 5)
    arena = memoryview(b)
    assert arena.nbytes == 15 and not arena.readonly
    assert b.arena.nbytes == 15
    b.append(b"abc")
    b.append(b"de")
    assert bytes(arena[:3]) == b"abc" and bytes(arena[5:7]) == b"de"
    arena[0] = ord("X")
    assert bytes(b[0]) == b"Xbc"
    assert bytes(b.arena[5:7]) == b"de"
    assert np.asarray(b).shape == (15,)  # numpy sees the same bytes


# ---- hypothesis: building gives back exactly what went in -----------------------------------

payload_lists = st.lists(st.binary(min_size=0, max_size=300), min_size=0, max_size=40)


@SETTINGS
@given(payload_lists)
def test_append_round_trip(items):
    b = PacketBatch(max(1, len(items)), 300)
    for i, p in enumerate(items):
        assert b.append(p) == i
    assert len(b) == len(items)
    assert contents(b) == items
    assert memoryview(b.lengths)[:len(items)].tolist() == [len(p) for p in items]
    assert memoryview(b.offsets)[:len(items)].tolist() == [300 * i for i in range(len(items))]


@SETTINGS
@given(payload_lists)
def test_add_slices_lengths_round_trip(items):
    buf = bytearray(b"".join(items))
    b = PacketBatch(max(1, len(items)), 16)
    assert b.add_slices(buf, lengths=[len(p) for p in items]) == len(items)
    assert contents(b) == items


@SETTINGS
@given(st.binary(min_size=0, max_size=3000), st.integers(1, 700))
def test_add_slices_segment_round_trip(data, seg):
    want = [data[i:i + seg] for i in range(0, len(data), seg)]
    b = PacketBatch(max(1, len(want)), 1)
    assert b.add_slices(data, seg) == len(want)
    assert contents(b) == want


@SETTINGS
@given(st.lists(st.tuples(st.binary(max_size=20), st.booleans()), max_size=40))
def test_keep_is_a_filter(items):
    b = PacketBatch(max(1, len(items)), 20)
    for i, (p, _) in enumerate(items):
        b.append(p, (f"10.{i // 256}.{i % 256}.1", 1000 + i))
    mask = np.array([k for _, k in items], dtype=bool)
    want = [(p, (f"10.{i // 256}.{i % 256}.1", 1000 + i)) for i, (p, k) in enumerate(items) if k]
    assert b.keep(mask) == len(want)
    assert list(zip(contents(b), b.addresses(), strict=True)) == want


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)


@SETTINGS
@given(st.one_of(
    st.tuples(ipv4, st.integers(0, 65535)),
    st.tuples(ipv6, st.integers(0, 65535)),
    st.tuples(ipv6, st.integers(0, 65535), st.integers(0, 0xFFFFF), st.integers(0, 0xFFFFFFFF)),
))
def test_address_round_trip(addr):
    b = PacketBatch(1, 1)
    b.append(b"", addr)
    got = b.addr(0)
    assert ipaddress.ip_address(got[0]) == ipaddress.ip_address(addr[0])
    assert got[1:] == ((*addr[1:], 0, 0) if len(addr) == 2 and ":" in addr[0] else addr[1:])
    assert len(got) == (4 if ":" in addr[0] else 2)


# ---- memory ownership and re-entrancy (regressions) --------------------------


def test_batch_is_freed_without_the_gc():
    import weakref
    gc.disable()
    try:
        b = PacketBatch(8, 1 << 16)
        b.append(b"x")
        view = b[0]
        ref = weakref.ref(b)
        del b
        assert ref() is None  # the arena views do not keep a cycle alive
        assert bytes(view) == b"x"  # and the memory lives as long as a view does
    finally:
        gc.enable()


def test_releasing_arena_view_does_not_break_the_batch():
    b = PacketBatch(4, 16)
    b.append(b"abc")
    with b.arena as a:
        a[0] = ord("A")
    assert bytes(b[0]) == b"Abc"
    assert b.arena[1] == ord("b")


def test_add_slices_cannot_be_reentered():
    b = PacketBatch(4, 16)
    data = bytearray(64)

    class Sneaky:
        def __len__(self):
            return 2

        def __getitem__(self, i):
            b.add_slices(data, 1)  # mutating the batch mid-call
            return 4

    with pytest.raises(RuntimeError, match="PacketBatch is in use by another call"):
        b.add_slices(data, lengths=Sneaky())
    assert len(b) <= b.capacity


# ---- hardening: tampered arrays, hostile addresses, big arenas ----------------------


def test_item_with_tampered_offset_or_length_is_refused_not_clamped():
    """batch[i] reads entry i once and refuses one that points outside its
    buffer (the arrays are writable), instead of returning a clamped slice."""
    b = PacketBatch(4, 64)
    b.append(b"hello")
    np.asarray(b.offsets)[0] = b.slots * b.slot_size - 2
    with pytest.raises(ValueError, match=re.escape("datagram 0: offset 254 + length 5 runs past the 256-byte")):
        b[0]
    np.asarray(b.offsets)[0] = 0
    np.asarray(b.lengths)[0] = 2**32 - 1
    with pytest.raises(ValueError, match=re.escape("batch.offsets or batch.lengths was rewritten")):
        b[0]
    np.asarray(b.lengths)[0] = 5
    assert bytes(b[0]) == b"hello"
    ext = PacketBatch(4, 64)
    ext.add_slices(b"abcdefgh", 4)
    np.asarray(ext.offsets)[1] = 6
    with pytest.raises(ValueError, match=re.escape("datagram 1: offset 6 + length 4 runs past the 8-byte")):
        ext[1]


@pytest.mark.parametrize("host", ["127.0.0.1\0", "127.0.0.1\0.evil", "::1\0"])
def test_address_with_nul_is_refused_like_the_socket_module(host):
    """Not cut at the NUL (inet_pton would read "127.0.0.1"): refused, with
    the socket module's error type and words."""
    b = PacketBatch(4, 64)
    with pytest.raises(TypeError, match="address host must not contain null character"):
        b.append(b"x", (host, 9))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s, \
            pytest.raises(TypeError, match="must not contain null character"):
        s.sendto(b"x", (host, 9))


def test_big_arena_is_faulted_in_without_the_gil():
    """Making a large batch lets other threads run meanwhile (the arena is
    faulted in with the GIL released): a counting thread advances a long way
    during the one call."""
    counts = [0]
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            counts[0] += 1
    t = threading.Thread(target=count, daemon=True)
    t.start()
    try:
        before = counts[0]
        b = PacketBatch(256, 1 << 20)  # 256 MiB
        during = counts[0] - before
    finally:
        stop.set()
        t.join(10)
    assert b.slots * b.slot_size == 256 << 20
    assert during > 10_000, during  # held the GIL throughout: a few increments at most
def test_buffer_is_what_the_offsets_point_into():
    b = burstio.PacketBatch(4, 64)
    b.append(b"abc")
    assert len(b.buffer) == len(b.arena) == 4 * 64
    assert bytes(b.buffer[b.offsets[0]:b.offsets[0] + 3]) == b"abc"
    data = bytearray(b"0123456789")
    b.clear()
    b.add_slices(data, 5)
    view = b.buffer
    assert view.obj is data and len(view) == 10
    assert bytes(view[b.offsets[1]:b.offsets[1] + b.lengths[1]]) == b"56789"
    b.clear()
    assert len(b.buffer) == 4 * 64  # the arena again
