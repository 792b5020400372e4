"""The options every vendor reader takes: one ``ReaderOptions``, built once from the keywords a user
passes (``open_source``, ``Catalog.ingest``, ``nextick ingest``) and handed to whichever reader
the file turns out to need.

An option a reader has no use for is left unused (``tz`` means nothing to a Binance file): the same
options go to every file of a mixed folder. An option no reader knows is refused when the struct is
built, with the valid names, so a misspelt ``calender=`` fails before any file is read.

``instrument_template`` and ``replay_kwargs`` turn the options into what the readers build on: the
instrument each new symbol is made from, and the ``feeds.replay.FileReplay`` keywords.
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.domain.instrument import Instrument, InstrumentTable
from engine.domain.validate import ValidationPolicy

# Instrument fields ``instrument_defaults`` may set; symbol and venue come from the file or the reader.
INSTRUMENT_FIELDS = ("tick_size", "lot_size", "calendar", "gap_ns", "warmup_ticks")


class ReaderOptions(msgspec.Struct, kw_only=True, frozen=True):
    """What a user may tell a reader. None (or the default) leaves the choice to the reader, whose
    module docstring says what it picks."""

    policy: ValidationPolicy | str | None = None  # bad rows: quarantine (default) or reject, per rule
    symbol: str | None = None  # the instrument of a file that does not name its own
    venue: str | None = None
    calendar: str | None = None  # overrides the vendor's calendar for every instrument of the file
    instruments: InstrumentTable | None = None  # a fixed table: other symbols are unknown_symbol rows
    template: Instrument | None = None  # tick_size, lot_size, gap_ns and warmup_ticks of new instruments
    instrument_defaults: dict[str, Any] | None = None  # any of INSTRUMENT_FIELDS
    ts_unit: str = "auto"  # epoch timestamps: s, ms, us, ns or detected
    tz: str | None = None  # the clock of text timestamps (HistData)
    chunk_rows: int | None = None  # rows per chunk handed on
    block_size: int | None = None  # bytes parsed per block
    now_ns: int | None = None  # "in the future" is judged against this (tests); None: the wall clock
    volume_scale: float | None = None  # Dukascopy volumes (in millions) times this
    changes_only: bool | None = None  # Databento mbp-1, LOBSTER: only rows whose top of book changed
    one_sided: str = "keep"  # Databento, LOBSTER: a quote with an empty side is kept (flagged) or skipped

    @classmethod
    def build(cls, base: ReaderOptions | None = None, /, **options: Any) -> ReaderOptions:
        """``base`` (or the defaults) with ``options`` set; an option no reader knows is refused."""
        names = cls.__struct_fields__
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ValueError(
                f"unknown reader option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"valid options: {', '.join(names)}"
            )
        return msgspec.structs.replace(base, **options) if base is not None else cls(**options)

    def validation_policy(self) -> ValidationPolicy:
        """``policy`` parsed (``"crossed=reject,duplicate=quarantine"``); the default quarantines."""
        if isinstance(self.policy, str):
            return ValidationPolicy.parse(self.policy)
        return self.policy or ValidationPolicy()

    def given(self) -> dict[str, Any]:
        """The options that differ from the defaults: what a user asked for (the catalog records them)."""
        default = type(self)()
        return {f: v for f in self.__struct_fields__ if (v := getattr(self, f)) != getattr(default, f)}


def instrument_template(
    options: ReaderOptions, *, venue: str, calendar: str, defaults: dict[str, Any] | None = None
) -> Instrument:
    """The instrument every new symbol of the file is made from.

    Precedence, lowest first: the vendor's ``defaults`` and ``calendar``; ``options.template``'s
    tick_size, lot_size, gap_ns and warmup_ticks (not its symbol, venue or calendar, which the vendor
    knows); ``options.instrument_defaults``; ``options.calendar``. ``venue`` is the reader's choice
    (``options.venue`` when given, else the vendor's).
    """
    fields: dict[str, Any] = {"calendar": calendar, **(defaults or {})}
    if options.template is not None:
        for f in ("tick_size", "lot_size", "gap_ns", "warmup_ticks"):
            fields[f] = getattr(options.template, f)
    extra = dict(options.instrument_defaults or {})
    unknown = set(extra) - set(INSTRUMENT_FIELDS)
    if unknown:
        raise ValueError(
            f"instrument_defaults cannot set {', '.join(sorted(unknown))}: symbol and venue come from the file "
            f"and the reader; valid keys: {', '.join(INSTRUMENT_FIELDS)}"
        )
    fields.update(extra)
    if options.calendar:
        fields["calendar"] = options.calendar
    return Instrument(symbol="TEMPLATE", venue=venue, **fields)


def replay_kwargs(options: ReaderOptions, template: Instrument, *, ts_unit: bool = True) -> dict[str, Any]:
    """Keyword arguments for ``FileReplay``: a passed ``instruments`` table is used as given (fixed:
    other symbols are ``unknown_symbol`` rows); otherwise the table grows from ``template``.
    ``ts_unit=False`` for a layout whose times are text (the unit option means nothing there)."""
    kw: dict[str, Any] = {"policy": options.policy, "now_ns": options.now_ns}
    if ts_unit:
        kw["ts_unit"] = options.ts_unit
    if options.instruments is not None:
        kw["instruments"] = options.instruments
    else:
        kw["template"] = template
    if options.chunk_rows is not None:
        kw["chunk_rows"] = options.chunk_rows
    if options.block_size is not None:
        kw["block_size"] = options.block_size
    return kw


def with_symbol(template: Instrument, symbol: str, **changes: Any) -> Instrument:
    return msgspec.structs.replace(template, symbol=symbol, **changes)
