"""HistData.com FX tick files (the "ASCII" tick export, ``DAT_ASCII_EURUSD_T_202001.csv``).

No header; each line is ``YYYYMMDD HHMMSSmmm,bid,ask,volume`` (``20200101 170000065,1.121200,1.121720,0``).
The clock is Eastern Standard Time all year, i.e. fixed UTC-5 without daylight saving (IANA
``Etc/GMT+5``, sign inverted by convention), converted here to UTC ns: 2020-01-01 17:00 EST is 22:00
UTC. ``ts_event`` = ``ts_recv`` (flag ``SYNTHETIC_TS``): there is one time per tick.

Sizes: HistData publishes none (the volume column is always 0), so ``bid_sz`` = ``ask_sz`` = 0, which
the validator allows (sizes must be >= 0). Do not run the backtester with ``size_cap`` on these: a
size cap of 0 fills nothing.

Reader options (``feeds.vendors.options.ReaderOptions``): ``symbol`` (default from the file name: ``DAT_ASCII_EURUSD_T_202001.csv``,
``histdata_EURUSD_2020-01-01.csv``, else the first six-letter token of the name, else the stem),
``venue`` (default ``histdata``), ``calendar`` (default ``FX``: 17:00-17:00 New York, opening Sun-Thu),
``tz`` (default ``Etc/GMT+5``), ``instrument_defaults``/``template`` (tick_size defaults to 0.00001,
0.001 for JPY pairs), ``instruments``, ``policy``, ``chunk_rows``, ``block_size``, ``now_ns``.
The field separator is ``,`` or, when the first line has no comma, ``;``.
"""

from __future__ import annotations

import re
from pathlib import Path

from feeds.replay import ColumnMap, FileReplay
from feeds.vendors.headers import base_name, first_line
from feeds.vendors.options import ReaderOptions, instrument_template, replay_kwargs

TS_FORMAT = "%Y%m%d %H%M%S%f"
TZ = "Etc/GMT+5"
_ROW = re.compile(r"^\d{8} \d{6}\d{0,3}\s*([,;])\s*[\d.]+\s*\1\s*[\d.]+\s*(?:\1\s*[\d.]*\s*)?$")
_NAMES = (
    re.compile(r"^DAT_ASCII_(?P<symbol>[A-Za-z0-9]+)_T(?:_|$)", re.IGNORECASE),
    re.compile(r"^histdata_(?P<symbol>[A-Za-z0-9]+)(?:_|$)", re.IGNORECASE),
    re.compile(r"(?:^|[_\-.])(?P<symbol>[A-Za-z]{6})(?=$|[_\-.])"),
)
_COLUMNS = ColumnMap(ts_recv="0", bid_px="1", ask_px="2")


def sniff(path: Path, head: bytes) -> bool:
    return path.is_file() and bool(_ROW.match(first_line(head)))


def symbol_from_name(path: Path) -> str:
    name = base_name(path)
    for pattern in _NAMES:
        m = pattern.search(name)
        if m:
            return m["symbol"].upper()
    return name


def fx_tick_size(symbol: str) -> float:
    return 0.001 if "JPY" in symbol.upper() else 0.00001


def reader(path: Path, options: ReaderOptions = ReaderOptions()) -> FileReplay:
    from feeds.vendors import head_of

    path = Path(path)
    line = first_line(head_of(path))
    delimiter = ";" if line and "," not in line and ";" in line else ","
    symbol = options.symbol or symbol_from_name(path)
    inst = instrument_template(
        options, venue=options.venue or "histdata", calendar="FX", defaults={"tick_size": fx_tick_size(symbol)}
    )
    return FileReplay(
        path, columns=_COLUMNS, has_header=False, ts_format=TS_FORMAT, tz=options.tz or TZ, delimiter=delimiter,
        symbol=symbol, **replay_kwargs(options, inst, ts_unit=False),
    )
