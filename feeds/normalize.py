"""Venue frames to quote rows: the one path every live and recorded frame takes into the engine.

``FrameNormalizer.on_frame(frame, recv_ns)`` decodes a frame with its venue's protocol, maps symbols to
instrument ids, checks the venue's update ids, sets the quote flags and appends ``QUOTE_DTYPE`` rows;
``take()`` hands the rows over. The live feed (``feeds.live``) and raw-recording replay
(``feeds.raw_replay``) both drive it, so a recording replays into exactly the quotes the live run saw.

Sequence rules per instrument (``Venue.seq_mode``):

- a repeated id is a duplicate (Binance) or a periodic re-send of an unchanged book (Bybit): no new quote,
  counted under ``duplicate``;
- an id below the last one is a stale message: counted under ``out_of_order`` and dropped;
- with consecutive ids (Bybit), a jump is a gap: the quote is kept and flagged ``AFTER_RECONNECT``, so the
  engine resets that instrument (reason RECONNECT), and the gap is counted under ``seq_gaps``;
- a venue snapshot after its own restart (Bybit ``u=1``) restarts the sequence and also resets.

``mark_reconnect`` and ``mark_stale`` flag each instrument's next quote (the feed calls them when a
connection is replaced or goes quiet), which is how RECONNECT and STALE resets reach the engine.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import msgspec
import numpy as np

from engine.domain.quote import QUOTE_DTYPE, QuoteFlag
from feeds.venues.base import FrameError, FrameKind, SeqMode, Venue

_ROW = struct.Struct("<qqddddQIH2x")
assert _ROW.size == QUOTE_DTYPE.itemsize
_SYNTHETIC_TS = int(QuoteFlag.SYNTHETIC_TS)
_ONE_SIDED = int(QuoteFlag.ONE_SIDED)
_AFTER_RECONNECT = int(QuoteFlag.AFTER_RECONNECT)
_STALE = int(QuoteFlag.STALE)


class FeedCounters(msgspec.Struct, kw_only=True):
    """What one venue's frames amounted to; shown in the status line and the run summary."""

    frames: int = 0
    quotes: int = 0
    control: int = 0
    ignored: dict[str, int] = msgspec.field(default_factory=dict)  # by stream/channel
    quarantined: dict[str, int] = msgspec.field(default_factory=dict)  # malformed, unknown_symbol, duplicate, ...
    venue_errors: int = 0
    shutdown_notices: int = 0
    seq_gaps: int = 0
    last_error: str = ""

    def count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1


class FrameNormalizer:
    """Decodes one venue's frames into quote rows for the instruments in ``ids`` (venue symbol -> id)."""

    def __init__(
        self,
        venue: Venue,
        ids: dict[str, int],
        counters: FeedCounters | None = None,
        *,
        add_symbol: Callable[[str], int] | None = None,
    ) -> None:
        self.venue = venue
        self.ids = ids
        # Called with a symbol not in ``ids``; returns its new instrument id (a replay that learns
        # its instruments as they appear). Without it an unknown symbol is quarantined.
        self.add_symbol = add_symbol
        self.counters = counters if counters is not None else FeedCounters()
        n = max(ids.values(), default=-1) + 1
        self._last_seq = [0] * n  # 0: nothing seen since the last (re)connect
        self._pending = [0] * n  # flags for each instrument's next quote
        self._buf = bytearray(_ROW.size * 256)
        self._n = 0
        self._seq_mode = venue.seq_mode

    def on_frame(self, frame: str | bytes, recv_ns: int) -> FrameKind | None:
        """Decodes ``frame`` received at ``recv_ns`` (UTC ns). Returns its kind, or None for a frame
        that broke the venue's format (counted under ``malformed``; ``counters.last_error`` says why)."""
        c = self.counters
        c.frames += 1
        try:
            kind, payload = self.venue.decode(frame)
        except FrameError as e:
            c.count(c.quarantined, "malformed")
            c.last_error = str(e)
            return None
        if kind is FrameKind.QUOTES:
            for q in payload:
                self._add(q, recv_ns)
        elif kind is FrameKind.CONTROL:
            c.control += 1
        elif kind is FrameKind.IGNORED:
            c.count(c.ignored, payload)
        elif kind is FrameKind.SHUTDOWN:
            c.shutdown_notices += 1
        elif kind is FrameKind.ERROR:
            c.venue_errors += 1
            c.last_error = f"{self.venue.name}: {payload}"
        return kind

    def _add(self, q, recv_ns: int) -> None:
        c = self.counters
        inst = self.ids.get(q.symbol)
        if inst is None:
            if self.add_symbol is None:
                c.count(c.quarantined, "unknown_symbol")
                return
            inst = self.ids[q.symbol] = self.add_symbol(q.symbol)
            grow = inst + 1 - len(self._pending)
            if grow > 0:
                self._pending.extend([0] * grow)
                self._last_seq.extend([0] * grow)
        flags = self._pending[inst]
        seq = q.seq
        mode = self._seq_mode
        if mode is not SeqMode.NONE and seq:
            last = self._last_seq[inst]
            if q.snapshot:
                if last:
                    flags |= _AFTER_RECONNECT
            elif last:
                if seq == last:
                    c.count(c.quarantined, "duplicate")
                    return
                if seq < last:
                    c.count(c.quarantined, "out_of_order")
                    return
                if mode is SeqMode.CONSECUTIVE and seq != last + 1:
                    c.seq_gaps += 1
                    flags |= _AFTER_RECONNECT
            self._last_seq[inst] = seq
        ts_event = q.ts_event_ns
        if not ts_event:
            ts_event = recv_ns
            flags |= _SYNTHETIC_TS
        if not (q.bid_sz > 0 and q.ask_sz > 0):
            flags |= _ONE_SIDED
        self._pending[inst] = 0
        off = self._n * _ROW.size
        if off + _ROW.size > len(self._buf):
            self._buf.extend(bytes(len(self._buf)))
        _ROW.pack_into(self._buf, off, ts_event, recv_ns, q.bid_px, q.ask_px, q.bid_sz, q.ask_sz, seq, inst, flags)
        self._n += 1
        c.quotes += 1

    def mark_reconnect(self, instruments: list[int] | None = None) -> None:
        """The connection carrying ``instruments`` (all when None) was replaced: data may be missing, so
        each one's next quote resets it (RECONNECT), and sequence checks start over."""
        for i in self._each(instruments):
            self._pending[i] |= _AFTER_RECONNECT
            self._last_seq[i] = 0

    def mark_stale(self, instruments: list[int] | None = None) -> None:
        """``instruments`` went quiet past the watchdog: each one's next quote resets it (STALE)."""
        for i in self._each(instruments):
            self._pending[i] |= _STALE

    def _each(self, instruments: list[int] | None) -> list[int]:
        return list(range(len(self._pending))) if instruments is None else instruments

    def __len__(self) -> int:
        return self._n

    def take(self) -> np.ndarray:
        """The rows decoded since the last call (a new array; the buffer is reused)."""
        # A byte copy of the packed records, padding included (ndarray.copy() moves a structured dtype
        # field by field and leaves the padding uninitialized, so equal quotes could differ byte for
        # byte); a bytearray slice is also 5x cheaper than take_rows for the live path's small batches.
        out = np.frombuffer(self._buf[: self._n * _ROW.size], dtype=QUOTE_DTYPE)
        self._n = 0
        return out
