"""Dukascopy tick CSV exports (decoded from Dukascopy's bi5 files), plain or gzip.

Two layouts, told apart by the header:

- ``symbol,ts_ms_utc,bid,ask,bid_volume,ask_volume`` (one instrument per ``symbol`` value);
- dukascopy-node's ``timestamp,askPrice,bidPrice,askVolume,bidVolume`` (no symbol column: the
  symbol comes from ``symbol=`` or the file name, ``eurusd-tick-2019-02-04-2019-02-05.csv`` -> EURUSD).

Times are epoch milliseconds UTC (the unit is detected and reported in ``stats.ts_unit``); ``ts_event``
= ``ts_recv`` (flag ``SYNTHETIC_TS``). Volumes are published in millions of base currency units;
they are multiplied by ``volume_scale`` (default 1e6, so sizes are in base units, like lot_size;
pass ``volume_scale=1`` to keep millions).

Reader options (``feeds.vendors.options.ReaderOptions``): ``symbol`` (only for the layout without a symbol column), ``venue`` (default
``dukascopy``), ``calendar`` (default ``FX``), ``volume_scale``, ``instrument_defaults``/``template``
(tick_size defaults to 0.00001), ``instruments``, ``policy``, ``ts_unit``, ``chunk_rows``,
``block_size``, ``now_ns``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from feeds.replay import ColumnMap, FileReplay
from feeds.vendors.headers import base_name, header_fields
from feeds.vendors.options import ReaderOptions, instrument_template, replay_kwargs

LAYOUTS: dict[tuple[str, ...], ColumnMap] = {
    ("symbol", "ts_ms_utc", "bid", "ask", "bid_volume", "ask_volume"): ColumnMap(
        ts_recv="ts_ms_utc", bid_px="bid", ask_px="ask", bid_sz="bid_volume", ask_sz="ask_volume", symbol="symbol"
    ),
    ("timestamp", "askprice", "bidprice", "askvolume", "bidvolume"): ColumnMap(
        ts_recv="timestamp", bid_px="bidPrice", ask_px="askPrice", bid_sz="bidVolume", ask_sz="askVolume"
    ),
}
VOLUME_SCALE = 1e6  # Dukascopy publishes volumes in millions of base units
_NODE_NAME = re.compile(r"^(?P<symbol>[A-Za-z0-9]+)-tick-", re.IGNORECASE)


def _layout(head: bytes) -> tuple[tuple[str, ...], list[str]] | None:
    raw = header_fields(head)
    key = tuple(f.lower() for f in raw)
    return (key, raw) if key in LAYOUTS else None


def sniff(path: Path, head: bytes) -> bool:
    return path.is_file() and _layout(head) is not None


def symbol_from_name(path: Path) -> str:
    name = base_name(path)
    m = _NODE_NAME.match(name)
    return m["symbol"].upper() if m else name


class DukascopyReplay(FileReplay):
    """``FileReplay`` that scales the volumes to base units."""

    def __init__(self, path: Path, *, volume_scale: float = VOLUME_SCALE, **kw: Any) -> None:
        if not (volume_scale > 0):
            raise ValueError(f"volume_scale must be positive, not {volume_scale!r}")
        self.volume_scale = float(volume_scale)
        super().__init__(path, **kw)

    def _convert(self, batch, lines, ts_recv, ts_event):
        quotes, code, describe = super()._convert(batch, lines, ts_recv, ts_event)
        if self.volume_scale != 1.0:
            # Rounded to 1e-6 units: 0.07 million is 70000, not 70000.00000000001.
            for f in ("bid_sz", "ask_sz"):
                quotes[f] = np.round(quotes[f] * self.volume_scale, 6)
        return quotes, code, describe


def reader(path: Path, options: ReaderOptions = ReaderOptions()) -> DukascopyReplay:
    from feeds.vendors import head_of

    path = Path(path)
    found = _layout(head_of(path))
    if found is None:
        raise ValueError(
            f"{path}: not a Dukascopy tick CSV; expected the header "
            + " or ".join(repr(",".join(k)) for k in LAYOUTS)
        )
    key, raw = found
    # The file's own spelling of each column.
    spelled = {k: r for k, r in zip(key, raw)}
    columns = ColumnMap(**{f: spelled[c.lower()] for f, c in LAYOUTS[key].mapped().items()})
    symbol = options.symbol
    if columns.symbol is not None:
        if symbol:
            raise ValueError(f"{path}: the file has a symbol column; do not pass symbol=")
    else:
        symbol = symbol or symbol_from_name(path)
    inst = instrument_template(
        options, venue=options.venue or "dukascopy", calendar="FX", defaults={"tick_size": 0.00001}
    )
    scale = VOLUME_SCALE if options.volume_scale is None else options.volume_scale
    return DukascopyReplay(
        path, columns=columns, symbol=symbol or None, volume_scale=scale, **replay_kwargs(options, inst)
    )
