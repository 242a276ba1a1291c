"""PostgreSQL's binary array format, built with C-level byte slicing, for COPY … FORMAT BINARY.

psycopg's generic list dumper calls a Python function per element; for a 100,000-worker tick
that was most of the write path's client CPU. Here a NULL-free run of fixed-width values is
one `array` conversion plus a few strided copies. COPY sends such a value as opaque bytes and
PostgreSQL reads it as the column's array type.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence
from typing import Any

FLOAT8 = 701
FLOAT4 = 700
INT8 = 20
BOOL = 16
TEXT = 25

_FIXED = {FLOAT8: ("d", 8), FLOAT4: ("f", 4), INT8: ("q", 8)}
_SWAP = sys.byteorder == "little"
_HEADER = struct.Struct(">iiiii")  # ndim, has-nulls, element oid, length, lower bound
_LENGTH = struct.Struct(">i").pack
_NULL = b"\xff\xff\xff\xff"


def array_value(values: Sequence[Any], oid: int) -> bytes:
    """The binary (array_recv) form of a one-dimensional array of `oid` elements."""
    n = len(values)
    if n == 0:
        return struct.pack(">iii", 0, 0, oid)
    has_null = None in values
    if oid == TEXT:
        body = _text(values)
    elif oid == BOOL:
        body = _runs(values, _bool_run) if has_null else _bool_run(values)
    else:
        code, size = _FIXED[oid]

        def run(part: Sequence[Any]) -> bytes | bytearray:
            return _fixed_run(part, code, size)

        body = _runs(values, run) if has_null else run(values)
    return _HEADER.pack(1, int(has_null), oid, n, 1) + body


def _fixed_run(values: Sequence[Any], code: str, size: int) -> bytes | bytearray:
    n = len(values)
    if n == 0:
        return b""
    data = array(code, values)
    if _SWAP:
        data.byteswap()
    raw = data.tobytes()
    step = size + 4
    out = bytearray(step * n)
    out[3::step] = bytes((size,)) * n  # each element's big-endian int32 length
    for k in range(size):
        out[4 + k :: step] = raw[k::size]
    return out


def _bool_run(values: Sequence[Any]) -> bytes | bytearray:
    n = len(values)
    out = bytearray(5 * n)
    out[3::5] = b"\x01" * n
    out[4::5] = bytes(map(bool, values))
    return out


def _runs(values: Sequence[Any], encode: Any) -> bytes:
    parts: list[bytes | bytearray] = []
    start = 0
    for i, value in enumerate(values):
        if value is None:
            parts.append(encode(values[start:i]) if i > start else b"")
            parts.append(_NULL)
            start = i + 1
    if start < len(values):
        parts.append(encode(values[start:]))
    return b"".join(parts)


def _text(values: Sequence[Any]) -> bytes:
    parts: list[bytes] = []
    append = parts.append
    for value in values:
        if value is None:
            append(_NULL)
            continue
        encoded = value.encode()
        append(_LENGTH(len(encoded)))
        append(encoded)
    return b"".join(parts)
