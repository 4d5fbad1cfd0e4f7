"""burstio._checks: the one place where burstio's Python code words a bad
argument. Each check's exact error type and wording: ``bool`` is not an int,
NaN is not a number of seconds, powers of two, a closed socket is EBADF, and
a socket of the wrong family or type is refused naming who needs it."""
from __future__ import annotations

import errno
import math
import re
import socket

import pytest

import burstio
from burstio._checks import (
    UDP,
    UDP_OR_TCP,
    check_choice,
    check_int,
    check_optional_int,
    check_seconds,
    check_socket,
    check_timeout,
    closed_socket_error,
    fileno_of,
)
from support.net import V4


def exactly(msg: str) -> str:
    """A pytest.raises(match=...) pattern for exactly ``msg``."""
    return "^" + re.escape(msg) + "$"


@pytest.fixture
def sockets():
    """Makes sockets (skipped, saying why, where the kernel refuses one) and closes them."""
    made: list[socket.socket] = []

    def make(family: int = socket.AF_INET, type_: int = socket.SOCK_DGRAM, proto: int = 0) -> socket.socket:
        try:
            s = socket.socket(family, type_, proto)
        except OSError as e:
            pytest.skip(f"this kernel makes no socket({family!r}, {type_!r}, {proto}): {e}")
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


# ---- integers ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 5, 10])
def test_check_int_returns_the_value_within_bounds(value):
    assert check_int("n", value, 1, 10) == value


@pytest.mark.parametrize("value, got", [(True, "bool"), (False, "bool"), (1.0, "float"), ("3", "str"),
                                        (None, "NoneType")])
def test_check_int_wants_an_int_and_not_a_bool(value, got):
    with pytest.raises(TypeError, match=exactly(f"n must be int, got {got}")):
        check_int("n", value, 0, 10)


@pytest.mark.parametrize("value", [0, 11, -1, 1 << 70])
def test_check_int_names_the_value_and_the_limits(value):
    with pytest.raises(ValueError, match=exactly(f"n must be between 1 and 10, got {value}")):
        check_int("n", value, 1, 10)


@pytest.mark.parametrize("value", [2, 4, 64, 65536])
def test_check_int_power_of_two(value):
    assert check_int("slots", value, 2, 65536, power_of_two=True) == value


@pytest.mark.parametrize("value", [3, 6, 1000, 1, 131072])
def test_check_int_not_a_power_of_two_or_out_of_bounds(value):
    with pytest.raises(ValueError, match=exactly(f"slots must be a power of two between 2 and 65536, got {value}")):
        check_int("slots", value, 2, 65536, power_of_two=True)


def test_check_int_power_of_two_wants_an_int_first():
    with pytest.raises(TypeError, match=exactly("slots must be int, got bool")):
        check_int("slots", True, 1, 64, power_of_two=True)


def test_check_optional_int():
    assert check_optional_int("count", None, 0, 5) is None
    assert check_optional_int("count", 0, 0, 5) == 0
    assert check_optional_int("count", 5, 0, 5) == 5
    with pytest.raises(TypeError, match=exactly("count must be int or None, got bool")):
        check_optional_int("count", True, 0, 5)
    with pytest.raises(TypeError, match=exactly("count must be int or None, got float")):
        check_optional_int("count", 1.5, 0, 5)
    with pytest.raises(ValueError, match=exactly("count must be between 0 and 5, got 6")):
        check_optional_int("count", 6, 0, 5)


# ---- seconds ----------------------------------------------------------------------


def test_check_seconds_returns_a_float():
    for value in (0, 1, 0.25):
        got = check_seconds("linger", value, 0, 1)
        assert got == value and type(got) is float


@pytest.mark.parametrize("value, got", [(True, "bool"), ("1", "str"), (None, "NoneType")])
def test_check_seconds_wants_a_number(value, got):
    with pytest.raises(TypeError, match=exactly(f"linger must be a number of seconds, got {got}")):
        check_seconds("linger", value, 0, 1)


@pytest.mark.parametrize("value", [5, -0.5, math.inf, math.nan])
def test_check_seconds_names_the_value_and_the_limits(value):
    with pytest.raises(ValueError, match=exactly(f"linger must be between 0 and 1 seconds, got {value!r}")):
        check_seconds("linger", value, 0, 1)


def test_check_seconds_formats_the_limits_short():
    with pytest.raises(ValueError, match=exactly("wait must be between 0.001 and 2.5 seconds, got 3")):
        check_seconds("wait", 3, 0.001, 2.5)


def test_check_timeout():
    assert check_timeout(None) is None
    for value in (0, 2, 0.5, math.inf):
        got = check_timeout(value)
        assert got == value and type(got) is float


@pytest.mark.parametrize("value, exc, msg", [
    (True, TypeError, "timeout must be a number of seconds or None, got bool"),
    ("1", TypeError, "timeout must be a number of seconds or None, got str"),
    (-1, ValueError, "timeout must be >= 0 or None, got -1"),
    (-0.5, ValueError, "timeout must be >= 0 or None, got -0.5"),
    (-math.inf, ValueError, "timeout must be >= 0 or None, got -inf"),
    (math.nan, ValueError, "timeout must be >= 0 or None, got nan"),
])
def test_check_timeout_errors(value, exc, msg):
    with pytest.raises(exc, match=exactly(msg)):
        check_timeout(value)


def test_check_timeout_names_the_argument():
    with pytest.raises(ValueError, match=exactly("max_wait must be >= 0 or None, got -1")):
        check_timeout(-1, "max_wait")


# ---- choices ----------------------------------------------------------------------


def test_check_choice_returns_the_choice():
    assert check_choice("mode", "never", ("adaptive", "always", "never")) == "never"


@pytest.mark.parametrize("choices, listed", [
    (("a",), "'a'"),
    (("a", "b"), "'a' or 'b'"),
    (("a", "b", "c"), "'a', 'b' or 'c'"),
])
def test_check_choice_lists_the_choices(choices, listed):
    with pytest.raises(ValueError, match=exactly(f"side must be {listed}, got 'x'")):
        check_choice("side", "x", choices)


def test_check_choice_shows_what_it_got():
    with pytest.raises(ValueError, match=exactly("mode must be 'a' or 'b', got 3")):
        check_choice("mode", 3, ["a", "b"])
    with pytest.raises(ValueError, match=exactly("mode must be 'a' or 'b', got None")):
        check_choice("mode", None, ["a", "b"])


# ---- sockets ----------------------------------------------------------------------


def test_closed_socket_error():
    e = closed_socket_error()
    assert type(e) is OSError and e.errno == errno.EBADF
    assert str(e) == "[Errno 9] Bad file descriptor (the socket is closed)"


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_check_socket_returns_the_socket(sockets, family):
    s = sockets(family)
    assert check_socket(s, "BurstSocket") is s
    assert check_socket(s, "BurstSocket", kinds=UDP) is s
    tcp = sockets(family, socket.SOCK_STREAM)
    assert check_socket(tcp, "ZeroCopySender", kinds=UDP_OR_TCP) is tcp


def test_check_socket_takes_a_burstsocket_only_when_asked(sockets):
    with burstio.BurstSocket.bind((V4, 0)) as bs:
        assert check_socket(bs, "SocketSet.add", burst_socket=True) is bs.sock
        with pytest.raises(TypeError, match=exactly("sock must be a socket.socket, got BurstSocket")):
            check_socket(bs, "SocketSet.add")


@pytest.mark.parametrize("burst_socket, what", [(False, "a socket.socket"), (True, "a socket.socket or BurstSocket")])
@pytest.mark.parametrize("thing", [3, "udp", None])
def test_check_socket_wants_a_socket(thing, burst_socket, what):
    with pytest.raises(TypeError, match=exactly(f"sock must be {what}, got {type(thing).__name__}")):
        check_socket(thing, "SocketSet.add", burst_socket=burst_socket)


def test_check_socket_closed_is_ebadf():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.close()
    with pytest.raises(OSError, match=exactly("[Errno 9] Bad file descriptor (the socket is closed)")) as ei:
        check_socket(s, "BurstSocket")
    assert ei.value.errno == errno.EBADF


@pytest.mark.parametrize("owner", ["BurstSocket", "SocketSet.add", "ZeroCopySender"])
def test_check_socket_wrong_family_names_the_owner(sockets, owner):
    unix = sockets(socket.AF_UNIX)
    with pytest.raises(ValueError, match=exactly(f"{owner} needs an AF_INET or AF_INET6 socket, "
                                                 f"got {socket.AF_UNIX!r}")):
        check_socket(unix, owner, kinds=UDP_OR_TCP)


@pytest.mark.parametrize("owner", ["BurstSocket", "SocketSet.add"])
def test_check_socket_wrong_type_names_the_owner(sockets, owner):
    tcp = sockets(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(ValueError, match=exactly(f"{owner} needs a UDP socket (SOCK_DGRAM), got SOCK_STREAM")):
        check_socket(tcp, owner)


def test_check_socket_wrong_protocol_names_the_owner(sockets):
    udplite = sockets(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDPLITE)
    with pytest.raises(ValueError, match=exactly(
            f"BurstSocket needs a UDP socket (IPPROTO_UDP), got protocol {socket.IPPROTO_UDPLITE}")):
        check_socket(udplite, "BurstSocket")
    with pytest.raises(ValueError, match=exactly(
            f"ZeroCopySender needs a UDP or TCP socket, got SOCK_DGRAM protocol {socket.IPPROTO_UDPLITE}")):
        check_socket(udplite, "ZeroCopySender", kinds=UDP_OR_TCP)


# ---- descriptors ------------------------------------------------------------------


def test_fileno_of_sockets_objects_and_ints(sockets):
    s = sockets()
    assert fileno_of(s) == s.fileno()
    assert fileno_of(s.fileno()) == s.fileno()

    class HasFileno:
        def fileno(self) -> int:
            return 7

    assert fileno_of(HasFileno()) == 7
    assert fileno_of(0) == 0


@pytest.mark.parametrize("thing, got", [(True, "bool"), ("eth0", "str"), (None, "NoneType"), (2.0, "float")])
def test_fileno_of_wants_a_socket_or_a_descriptor(thing, got):
    with pytest.raises(TypeError, match=exactly(f"need a socket or a file descriptor, got {got}")):
        fileno_of(thing)


def test_fileno_of_closed_or_negative_is_ebadf():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.close()
    for thing in (s, -1):
        with pytest.raises(OSError) as ei:
            fileno_of(thing)
        assert ei.value.errno == errno.EBADF
        assert ei.value.strerror == "Bad file descriptor (the socket is closed)"
