"""The quote record: one best-bid-offer update, normalized, with integer-nanosecond timestamps.

Bulk paths carry quotes as a numpy structured array of ``QUOTE_DTYPE``; its layout is the C++
``nextick::Quote`` struct (csrc/quote.hpp) byte for byte, so arrays cross into the core without a
copy. Fields are ordered widest first so the record packs into one 64-byte cache line.
"""

from __future__ import annotations

import enum

import numpy as np

QUOTE_DTYPE = np.dtype(
    [
        ("ts_event", "<i8"),  # exchange time, ns UTC; equals ts_recv when the venue gives none
        ("ts_recv", "<i8"),  # local receive time, ns UTC; the replay ordering key
        ("bid_px", "<f8"),
        ("ask_px", "<f8"),
        ("bid_sz", "<f8"),
        ("ask_sz", "<f8"),
        ("seq", "<u8"),  # venue update id, 0 if none
        ("instrument", "<u4"),  # index into the InstrumentTable
        ("flags", "<u2"),  # QuoteFlag bits
    ],
    align=True,
)
assert QUOTE_DTYPE.itemsize == 64, QUOTE_DTYPE.itemsize


class QuoteFlag(enum.IntFlag):
    """Bits of ``Quote.flags`` (mirrored in csrc/quote.hpp)."""

    SYNTHETIC_TS = 1 << 0  # ts_event was not given by the venue and copies ts_recv
    CROSSED = 1 << 1  # bid_px > ask_px (kept only when the policy flags instead of quarantining)
    ONE_SIDED = 1 << 2  # one side of the book is missing
    AFTER_RECONNECT = 1 << 3  # first quote after the feed reconnected
    CONFLATED = 1 << 4  # a conflator snapshot, stamped at its interval end
    STALE = 1 << 5  # the feed was silent past its watchdog before this quote


def empty_quotes(n: int) -> np.ndarray:
    """A zeroed quote array of length ``n``."""
    return np.zeros(n, dtype=QUOTE_DTYPE)


def mid_px(quotes: np.ndarray) -> np.ndarray:
    return 0.5 * (quotes["bid_px"] + quotes["ask_px"])


# numpy moves structured records field by field in fancy indexing and concatenate: several times
# slower than memcpy, and it leaves the padding bytes of the result uninitialized, so identical data
# could differ byte for byte. Quote rows are therefore moved as opaque 64-byte records.
def as_rows(quotes: np.ndarray) -> np.ndarray:
    """The quotes viewed as opaque 64-byte records (contiguous)."""
    quotes = np.ascontiguousarray(quotes)
    return quotes.view(np.dtype((np.void, quotes.dtype.itemsize)))


def take_rows(quotes: np.ndarray, sel: np.ndarray | slice | None = None) -> np.ndarray:
    """``quotes[sel]`` (all rows when None) as a new array, at memcpy speed."""
    v = as_rows(quotes)
    out = v.copy() if sel is None else v[sel]
    if isinstance(sel, slice):
        out = out.copy()
    return out.view(quotes.dtype)


def concat_rows(parts: list[np.ndarray]) -> np.ndarray:
    """``np.concatenate(parts)`` for quote arrays, at memcpy speed."""
    return np.concatenate([as_rows(p) for p in parts]).view(parts[0].dtype)
