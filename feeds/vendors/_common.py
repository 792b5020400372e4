"""Pieces the vendor readers share: instrument defaults from the reader options, header sniffing,
symbols from file names, and the ``FileReplay`` options every reader passes through."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec

from engine.domain.instrument import Instrument, InstrumentTable
from engine.domain.validate import ValidationPolicy

# Instrument fields a reader option may set; symbol and venue come from the file or the reader.
_INSTRUMENT_FIELDS = ("tick_size", "lot_size", "calendar", "gap_ns", "warmup_ticks")
_NUMBER = re.compile(r"^\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*$")


def first_line(head: bytes) -> str:
    """The first line of ``head`` as text (BOM, line end and surrounding blanks removed)."""
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    return line.decode("utf-8", errors="replace").strip()


def header_fields(head: bytes, delimiter: str = ",") -> list[str]:
    """The first line's fields as the file spells them, stripped (quotes removed); [] for no line."""
    line = first_line(head)
    return [f.strip().strip('"').strip() for f in line.split(delimiter)] if line else []


def header_names(head: bytes, delimiter: str = ",") -> list[str]:
    """The first line's fields, lower-cased and stripped (quotes removed)."""
    return [f.lower() for f in header_fields(head, delimiter)]


def is_number(text: str) -> bool:
    return bool(_NUMBER.match(text))


def template_for(
    *,
    venue: str,
    calendar: str,
    defaults: dict[str, Any] | None = None,
    template: Instrument | None = None,
    instrument_defaults: dict[str, Any] | None = None,
    calendar_option: str | None = None,
) -> Instrument:
    """The instrument every new symbol of the file is made from.

    Precedence, lowest first: the vendor's ``defaults`` and ``calendar``; ``template``'s tick_size,
    lot_size, gap_ns and warmup_ticks (not its symbol, venue or calendar, which the vendor knows);
    ``instrument_defaults`` (any of tick_size, lot_size, calendar, gap_ns, warmup_ticks); the
    ``calendar=`` option.
    """
    fields: dict[str, Any] = {"calendar": calendar, **(defaults or {})}
    if template is not None:
        for f in ("tick_size", "lot_size", "gap_ns", "warmup_ticks"):
            fields[f] = getattr(template, f)
    extra = dict(instrument_defaults or {})
    unknown = set(extra) - set(_INSTRUMENT_FIELDS)
    if unknown:
        raise ValueError(
            f"instrument_defaults cannot set {', '.join(sorted(unknown))}: symbol and venue come from the file "
            f"and the reader; valid keys: {', '.join(_INSTRUMENT_FIELDS)}"
        )
    fields.update(extra)
    if calendar_option:
        fields["calendar"] = calendar_option
    return Instrument(symbol="TEMPLATE", venue=venue, **fields)


def replay_kwargs(
    *,
    policy: ValidationPolicy | str | None,
    instruments: InstrumentTable | None,
    template: Instrument,
    ts_unit: str = "auto",
    chunk_rows: int | None = None,
    block_size: int | None = None,
    now_ns: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``FileReplay``: a passed ``instruments`` table is used as given (fixed:
    other symbols are ``unknown_symbol`` rows); otherwise the table grows from ``template``."""
    kw: dict[str, Any] = {"policy": policy, "ts_unit": ts_unit, "now_ns": now_ns}
    if instruments is not None:
        kw["instruments"] = instruments
    else:
        kw["template"] = template
    if chunk_rows is not None:
        kw["chunk_rows"] = chunk_rows
    if block_size is not None:
        kw["block_size"] = block_size
    return kw


def with_symbol(template: Instrument, symbol: str, **changes: Any) -> Instrument:
    return msgspec.structs.replace(template, symbol=symbol, **changes)


def base_name(path: Path) -> str:
    """The file name without compression and data suffixes: ``X.csv.gz`` -> ``X``."""
    name = path.name
    for suffix in (".gz", ".zip", ".csv", ".txt"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name
