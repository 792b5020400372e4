"""Arrow columns as numpy values, leniently: a value that does not parse becomes a masked entry
(the caller counts it as a ``malformed`` row with its line number), never a failed block.

``numbers`` for prices, sizes and sequence numbers; ``localize`` for naive local times (a vendor's
wall clock) to UTC ns. ``feeds.replay.FileReplay`` and the vendor readers that parse their own
layouts (``feeds.vendors.lobster``) share them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.domain.timestamps import local_ns_to_utc

# Numbers Arrow's string->number casts accept, with surrounding blanks; used to null out the rest.
NUMERIC_RE = (
    r"^\s*[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"  # decimal, optional exponent
    r"|[nN][aA][nN]|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)\s*$"  # nan, inf, infinity
)
# What Arrow raises on a value its cast or parser does not take.
PARSE_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)


def null_where(arr: pa.Array, bad: np.ndarray) -> pa.Array:
    """``arr`` with the entries where ``bad`` is set made null."""
    return pc.if_else(pa.array(~bad), arr, pa.scalar(None, arr.type))


def bisect_bad(arr: pa.Array, convert) -> np.ndarray:
    """Mask of the entries ``convert`` rejects, found by halving the failing array."""
    bad = np.zeros(len(arr), dtype=bool)

    def rec(a: pa.Array, offset: int) -> None:
        try:
            convert(a)
        except PARSE_ERRORS:
            if len(a) == 1:
                bad[offset] = True
                return
            h = len(a) // 2
            rec(a.slice(0, h), offset)
            rec(a.slice(h), offset + h)

    rec(arr, 0)
    return bad


def cast_lenient(arr: pa.Array, types: tuple[pa.DataType, ...]) -> pa.Array:
    """``arr`` cast to the first of ``types`` that takes it, with the entries no type takes as null."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    for t in types:
        try:
            return pc.cast(arr, t)
        except PARSE_ERRORS:
            pass
    # Slow path, only for blocks holding bad values: trim blanks, null out what is not a number,
    # and bisect whatever still fails (e.g. an integer too large for its type).
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = pc.utf8_trim_whitespace(arr)
        looks_numeric = pc.match_substring_regex(arr, NUMERIC_RE).fill_null(False)
        arr = pc.if_else(looks_numeric, arr, pa.scalar(None, arr.type))
        for t in types:
            try:
                return pc.cast(arr, t)
            except PARSE_ERRORS:
                pass
    last = types[-1]
    return pc.cast(null_where(arr, bisect_bad(arr, lambda a: pc.cast(a, last))), last)


def numbers(arr: pa.Array, types: tuple[pa.DataType, ...]) -> tuple[np.ndarray, np.ndarray | None]:
    """(values as numpy, mask of entries that are missing or did not parse, or None)."""
    res = cast_lenient(arr, types)
    bad = res.is_null().to_numpy(zero_copy_only=False) if res.null_count else None
    vals = res.fill_null(0).to_numpy(zero_copy_only=False)
    return vals, bad


def localize(ts: pa.Array, tz: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Naive local timestamp[ns] in ``tz`` -> (int64 ns UTC, mask of local times that do not exist).

    Arrow does it when it can find a time zone database; otherwise (hosts without
    /usr/share/zoneinfo) Python's zoneinfo, which the ``tzdata`` package backs, does it per minute.
    """
    local_ns = pc.cast(ts, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    try:
        aware = pc.assume_timezone(ts, timezone=tz, ambiguous="earliest", nonexistent="earliest")
        back = pc.cast(pc.local_timestamp(aware), pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        utc = pc.cast(aware, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    except PARSE_ERRORS:
        return local_ns_to_utc(local_ns, tz)
    nonexistent = back != local_ns
    return utc, (nonexistent if nonexistent.any() else None)
