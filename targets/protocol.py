"""Host side of the guest agent protocol (docs/agent-protocol.md): framing and reply parsing.

A frame is ``PFZ``, one type byte, a little-endian u32 payload length, the payload.
Everything from the guest is untrusted: the decoder checks magic, type and length before it
buffers a payload, and replies are parsed as plain text with explicit bounds. A stream that
breaks the rules is not resynchronised on the host side: the caller restarts the VM.
"""

from __future__ import annotations

import re
import select
import socket
import struct
import time
from dataclasses import dataclass

MAGIC = b"PFZ"
HEADER = struct.Struct("<3scI")
MAX_PAYLOAD = 1 << 20
HOST_TYPES = frozenset("HPLC")    # what the host sends (L: a program with slab counts)
GUEST_TYPES = frozenset("HRE")    # what the guest may send
AGENT_PROTOCOL = "1"


class ProtocolError(Exception):
    """The guest broke the framing or reply grammar."""


class ChannelClosed(Exception):
    """The guest side of the channel went away (QEMU exited)."""


class ChannelTimeout(Exception):
    """No complete frame before the deadline."""


@dataclass(frozen=True)
class Frame:
    kind: str
    payload: bytes


def encode(kind: str, payload: bytes = b"") -> bytes:
    if kind not in HOST_TYPES:
        raise ValueError(f"not a host frame type: {kind!r}")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(MAGIC, kind.encode(), len(payload)) + payload


class Decoder:
    """Incremental decoder of guest frames: ``feed`` bytes, get the frames completed so far."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames = []
        while len(self._buf) >= HEADER.size:
            magic, kind, length = HEADER.unpack_from(self._buf)
            if magic != MAGIC:
                raise ProtocolError(f"bad frame magic {bytes(self._buf[:HEADER.size])!r}")
            if kind.decode("latin-1") not in GUEST_TYPES:
                raise ProtocolError(f"unknown frame type {kind!r}")
            if length > MAX_PAYLOAD:
                raise ProtocolError(f"frame length {length} exceeds {MAX_PAYLOAD}")
            if len(self._buf) < HEADER.size + length:
                break
            payload = bytes(self._buf[HEADER.size:HEADER.size + length])
            del self._buf[:HEADER.size + length]
            frames.append(Frame(kind.decode("latin-1"), payload))
        return frames


class Channel:
    """Blocking frame I/O over the connected agent socket, with deadlines."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._decoder = Decoder()
        self._ready: list[Frame] = []

    def send(self, kind: str, payload: bytes = b"") -> None:
        try:
            self.sock.sendall(encode(kind, payload))
        except OSError as err:
            raise ChannelClosed(f"send failed: {err}") from None

    def recv(self, deadline: float) -> Frame:
        """The next frame; ``deadline`` is a time.monotonic() value."""
        while not self._ready:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise ChannelTimeout()
            try:
                data = self.sock.recv(65536)
            except OSError as err:
                raise ChannelClosed(f"receive failed: {err}") from None
            if not data:
                raise ChannelClosed("end of stream")
            self._ready.extend(self._decoder.feed(data))
        return self._ready.pop(0)

    def close(self) -> None:
        self.sock.close()


def text(payload: bytes, what: str) -> str:
    try:
        return payload.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not ASCII text") from None


def parse_hello(payload: bytes) -> str:
    """``procfuzz-agent 1 <uname -r>`` -> the guest's kernel release."""
    words = text(payload, "hello").split()
    if len(words) != 3 or words[0] != "procfuzz-agent":
        raise ProtocolError(f"bad hello {payload[:100]!r}")
    if words[1] != AGENT_PROTOCOL:
        raise ProtocolError(f"agent speaks protocol {words[1]}, the host {AGENT_PROTOCOL}")
    return words[2]


SLAB_NAME = re.compile(r"[a-z0-9_]{1,40}")
SLAB_VALUE = re.compile(r"[0-9]{1,18}")
MAX_SLAB_ENTRIES = 32


def parse_slab(line: str) -> dict[str, int]:
    """``S name=n name=n ...`` (at most 32 distinct caches, possibly none) -> {name: n}."""
    words = line.split(" ")
    if words[0] != "S" or len(words) - 1 > MAX_SLAB_ENTRIES:
        raise ProtocolError(f"bad slab line {line[:100]!r}")
    return _name_values(words[1:], SLAB_NAME, "slab")


def _name_values(words: list[str], name_re: re.Pattern, what: str) -> dict[str, int]:
    """``name=n`` words, each name once, decimal values of at most 18 digits."""
    values: dict[str, int] = {}
    for word in words:
        name, eq, value = word.partition("=")
        if not eq or not name_re.fullmatch(name) or not SLAB_VALUE.fullmatch(value) or name in values:
            raise ProtocolError(f"bad {what} entry {word[:100]!r}")
        values[name] = int(value)
    return values


def parse_results(payload: bytes, n_ops: int) -> tuple[int, int, tuple[str, ...], dict[str, int]]:
    """An ``R`` payload -> (ops_us, total_us, one result per op, slab active counts)."""
    lines = text(payload, "result").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    head = lines[0].split(" ") if lines else []
    if len(head) != 3 or head[0] != "T" or not head[1].isdigit() or not head[2].isdigit():
        raise ProtocolError(f"bad result header {lines[0][:100] if lines else ''!r}")
    if len(lines) < 2:
        raise ProtocolError("no slab line after the result header")
    slab = parse_slab(lines[1])
    results = tuple(lines[2:])
    if len(results) != n_ops:
        raise ProtocolError(f"{len(results)} result lines for {n_ops} ops")
    for line in results:
        if not line or not line.isprintable():
            raise ProtocolError(f"bad result line {line[:100]!r}")
    return int(head[1]), int(head[2]), results, slab


# ---- kernel coverage (targets/coverage): the "K" line ending an R payload when the probe is on --

KCOV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,80}(?:\.[a-z]+\.[0-9]+){0,3}")
MAX_KCOV_ENTRIES = 2048
MAX_KCOV_LINE = 64 * 1024


def split_kcov(payload: bytes) -> tuple[bytes, bytes]:
    """An R payload of a coverage-enabled agent -> (the payload without its last line, that line)."""
    body, newline, last = payload.rstrip(b"\n").rpartition(b"\n")
    if not newline:
        raise ProtocolError("no coverage line after the results")
    return body + b"\n", last


def parse_kcov(line: bytes) -> dict[str, int]:
    """``K name=hits ...`` (at most 2048 distinct functions, possibly none) -> {name: hits}."""
    if len(line) > MAX_KCOV_LINE:
        raise ProtocolError(f"coverage line of {len(line)} bytes")
    words = text(line, "coverage line").split(" ")
    if words[0] != "K" or len(words) - 1 > MAX_KCOV_ENTRIES:
        raise ProtocolError(f"bad coverage line {line[:100]!r}")
    return _name_values(words[1:], KCOV_NAME, "coverage")
