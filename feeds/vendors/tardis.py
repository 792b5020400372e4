"""Tardis.dev downloadable CSV: ``quotes`` and ``book_ticker`` (plain or gzip, as the datasets API
serves them).

Both data types share ``exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,bid_amount``
(ask columns first); columns are found by name, so their order and any extra columns do not matter,
and ``ask_amount``/``bid_amount`` may be absent (sizes 0). Times are microseconds since the epoch,
UTC; the unit is detected from the magnitude and reported in ``stats.ts_unit``.

Mapping: ``ts_recv`` = local_timestamp (Tardis orders its files by it), ``ts_event`` = timestamp.
One instrument per (exchange, symbol): the instrument's venue is the Tardis exchange id
(``binance-futures``, ``huobi-dm-swap``, ...) and its symbol the Tardis symbol; when a second exchange
in the same file uses a symbol already taken, that instrument is named ``<exchange>:<symbol>``.
Calendar 24x7.

Bad input, as everywhere (``feeds.replay.FileReplay`` does the parsing): an empty or non-numeric
price or amount (Tardis leaves a cell empty when it has no value, e.g. an empty book side) is a
``malformed`` row naming the field; crossed, locked, out-of-order, ... rows are counted by rule in
``stats.quarantined`` or, under a rejecting policy, raise ``BadInputError`` with ``file:line``.

Reader options (``feeds.vendors.options.ReaderOptions``): ``instruments`` (a fixed table: an (exchange, symbol) is found as
``<exchange>:<symbol>`` or as ``<symbol>``; others are ``unknown_symbol`` rows), ``calendar``,
``instrument_defaults``, ``template`` (tick/lot size, gap, warm-up), ``policy``, ``ts_unit``,
``chunk_rows``, ``block_size``, ``now_ns``. ``symbol`` is refused (the file names its symbols).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feeds.replay import ColumnMap, FileReplay
from feeds.vendors.headers import header_fields, header_names
from feeds.vendors.options import (
    ReaderOptions,
    instrument_template,
    replay_kwargs,
    with_symbol,
)

REQUIRED = ("exchange", "symbol", "timestamp", "local_timestamp", "ask_price", "bid_price")
SIZES = ("ask_amount", "bid_amount")


def sniff(path: Path, head: bytes) -> bool:
    return path.is_file() and set(REQUIRED) <= set(header_names(head))


def _encoded(arr: pa.Array) -> tuple[np.ndarray, list]:
    """(index per row, null -> len(values); values) of a text column."""
    enc = arr if pa.types.is_dictionary(arr.type) else pc.dictionary_encode(arr)
    values = enc.dictionary.to_pylist()
    idx = enc.indices.fill_null(len(values)).to_numpy(zero_copy_only=False).astype(np.int64)
    return idx, values


class TardisReplay(FileReplay):
    """``FileReplay`` keyed by (exchange, symbol) instead of symbol alone."""

    def __init__(self, path: Path, *, columns: ColumnMap, exchange_column: str = "exchange", **kw: Any) -> None:
        self.exchange_column = exchange_column
        self._exchange: pa.Array | None = None
        self._key_ids: dict[tuple[str, str], int] = {}
        super().__init__(path, columns=columns, **kw)

    def _read_columns(self) -> list[str]:
        return list(dict.fromkeys(super()._read_columns() + [self.exchange_column]))

    def _convert(self, batch, lines, ts_recv, ts_event):
        self._exchange = batch.column(self.exchange_column)
        try:
            return super()._convert(batch, lines, ts_recv, ts_event)
        finally:
            self._exchange = None

    def _symbol_ids(self, arr: pa.Array):
        """Instrument id per row (-1 unknown, -2 missing), missing mask, unknown mask."""
        ei, exchanges = _encoded(self._exchange)
        si, symbols = _encoded(arr)
        n_s = len(symbols) + 1
        code = ei * n_s + si
        lut = np.full((len(exchanges) + 1) * n_s, -2, dtype=np.int64)
        for c in np.flatnonzero(np.bincount(code, minlength=len(lut))).tolist():
            e, s = divmod(c, n_s)
            ex = str(exchanges[e] or "").strip() if e < len(exchanges) else ""
            sym = str(symbols[s] or "").strip() if s < len(symbols) else ""
            if ex and sym:  # else missing: a malformed row
                lut[c] = self._id_of(ex, sym)
        ids = lut[code]
        missing, unknown = ids == -2, ids == -1
        return ids, (missing if missing.any() else None), (unknown if unknown.any() else None)

    def _id_of(self, exchange: str, symbol: str) -> int:
        key = (exchange, symbol)
        sid = self._key_ids.get(key)
        if sid is not None:
            return sid
        table = self.instruments
        sid = table.get(f"{exchange}:{symbol}")
        if sid is None:
            plain = table.get(symbol)
            if plain is not None and (self._fixed or table[plain].venue == exchange):
                sid = plain
        if sid is None:
            if self._fixed:
                return -1  # not cached: each batch counts its own unknown rows the same way
            name = symbol if table.get(symbol) is None else f"{exchange}:{symbol}"
            sid = table.add(with_symbol(self._template, name, venue=exchange))
        self._key_ids[key] = sid
        return sid


def reader(path: Path, options: ReaderOptions = ReaderOptions()) -> TardisReplay:
    from feeds.vendors import head_of

    path = Path(path)
    if options.symbol:
        raise ValueError(f"{path}: a Tardis file names its symbols in its 'symbol' column; do not pass symbol=")
    raw = header_fields(head_of(path))
    col = {n.lower(): n for n in raw}  # lower-case name -> the file's spelling
    missing = [c for c in REQUIRED if c not in col]
    if raw and missing:
        raise ValueError(
            f"{path}: not a Tardis quotes/book_ticker CSV: the header lacks {', '.join(missing)} "
            f"(it has {', '.join(raw)})"
        )
    if not raw:  # an empty file (Tardis serves an empty gzip for a day without data)
        col = {c: c for c in REQUIRED + SIZES}
    columns = ColumnMap(
        ts_recv=col["local_timestamp"], ts_event=col["timestamp"], bid_px=col["bid_price"],
        ask_px=col["ask_price"], bid_sz=col.get("bid_amount"), ask_sz=col.get("ask_amount"),
        symbol=col["symbol"],
    )
    inst = instrument_template(options, venue="tardis", calendar="24x7")
    return TardisReplay(path, columns=columns, exchange_column=col["exchange"], **replay_kwargs(options, inst))

