"""Binance bookTicker archives from data.binance.vision (futures ``um``/``cm``, daily and monthly).

Layout: ``update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,transaction_time,event_time``
as CSV, with that header row or (older archives) without it, plain, gzip or the published ``.zip``
holding one CSV (streamed from the archive, never extracted to disk).

Mapping: ``ts_recv`` = event_time, ``ts_event`` = transaction_time, ``seq`` = update_id; both
times are epoch numbers whose unit (ms in the published files) is detected from their magnitude and
reported in ``stats.ts_unit``. Parsing, validation (``file:line`` errors, quarantine counts) and
bounded memory are ``feeds.replay.FileReplay``'s.

Reader options (``feeds.vendors.options.ReaderOptions``):

- ``symbol``: the instrument; default from the file name (``BTCUSDT-bookTicker-2024-01-01.zip`` ->
  ``BTCUSDT``), else the file's stem.
- ``venue``: default ``binance-coinm`` for COIN-M symbols (``BTCUSD_PERP``, ``BTCUSD_240329``) or
  files under a ``futures/cm/`` folder, else ``binance-usdm``; pass e.g. ``binance-spot`` to override.
- ``calendar`` (default ``24x7``), ``instrument_defaults`` (tick_size, lot_size, calendar, gap_ns,
  warmup_ticks), ``template`` (an Instrument whose tick/lot size, gap and warm-up are used),
  ``instruments`` (a fixed table: the symbol must be in it), ``policy``, ``ts_unit`` (default
  ``auto``), ``chunk_rows``, ``block_size``, ``now_ns``.

Ordering: the validator needs ``event_time`` non-decreasing; a row that goes back in time is an
``out_of_order`` quarantine (or a ``BadInputError`` under a rejecting policy), never reordered.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from feeds.replay import ColumnMap, FileReplay
from feeds.vendors.headers import (
    base_name,
    first_line,
    header_fields,
    header_names,
    is_number,
)
from feeds.vendors.options import ReaderOptions, instrument_template, replay_kwargs

HEADER = ("update_id", "best_bid_price", "best_bid_qty", "best_ask_price", "best_ask_qty", "transaction_time", "event_time")
_BY_NAME = ColumnMap(
    ts_recv="event_time", ts_event="transaction_time", bid_px="best_bid_price", ask_px="best_ask_price",
    bid_sz="best_bid_qty", ask_sz="best_ask_qty", seq="update_id",
)
_BY_POSITION = ColumnMap(ts_recv="6", ts_event="5", bid_px="1", ask_px="3", bid_sz="2", ask_sz="4", seq="0")
_SUFFIXES = (".csv", ".csv.gz", ".zip")
_EPOCH = re.compile(r"^\d{12,16}$")  # epoch ms (2001..2286) up to us
_NAME = re.compile(r"^(?P<symbol>[A-Za-z0-9_]+)-bookTicker", re.IGNORECASE)
_COINM = re.compile(r"USD_(?:PERP|\d{6})$")


def _headerless_row(line: str) -> bool:
    fields = [f.strip() for f in line.split(",")]
    return (
        len(fields) == 7
        and fields[0].isdigit()
        and all(is_number(f) for f in fields)
        and bool(_EPOCH.match(fields[5]))
        and bool(_EPOCH.match(fields[6]))
    )


def sniff(path: Path, head: bytes) -> bool:
    if not path.is_file():
        return False
    if tuple(header_names(head)) == HEADER or _headerless_row(first_line(head)):
        return True
    name = path.name.lower()
    return "bookticker" in name and name.endswith(_SUFFIXES)


def symbol_from_name(path: Path) -> str:
    m = _NAME.match(path.name)
    return m["symbol"].upper() if m else base_name(path)


def default_venue(path: Path, symbol: str) -> str:
    parts = [p.lower() for p in Path(path).resolve().parts]
    for a, b in itertools.pairwise(parts):
        if a == "futures" and b == "cm":
            return "binance-coinm"
        if a == "futures" and b == "um":
            return "binance-usdm"
    return "binance-coinm" if _COINM.search(symbol.upper()) else "binance-usdm"


def reader(path: Path, options: ReaderOptions = ReaderOptions()) -> FileReplay:
    from feeds.vendors import head_of

    path = Path(path)
    head = head_of(path)
    line = first_line(head)
    fields = header_fields(head)
    has_header = bool(fields) and not is_number(fields[0])
    if has_header and tuple(f.lower() for f in fields) != HEADER:
        raise ValueError(
            f"{path}: the header {line!r} is not Binance bookTicker's ({','.join(HEADER)}); "
            "read the file with the generic reader and a column map instead"
        )
    symbol = options.symbol or symbol_from_name(path)
    inst = instrument_template(options, venue=options.venue or default_venue(path, symbol), calendar="24x7")
    columns = _BY_NAME if has_header else _BY_POSITION
    if has_header:  # the header's own spelling (case) names the columns
        columns = ColumnMap(**{f: fields[HEADER.index(c)] for f, c in columns.mapped().items()})
    return FileReplay(
        path, columns=columns, has_header=has_header, symbol=symbol, **replay_kwargs(options, inst)
    )
