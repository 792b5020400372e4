"""The instrument table: what each ``Quote.instrument`` index refers to."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import msgspec

from engine.domain.calendar import SessionCalendar
from engine.domain.timestamps import SECOND_NS


class Instrument(msgspec.Struct, frozen=True, kw_only=True):
    """Static description of one tradable instrument.

    ``calendar`` is a session spec (see ``engine.domain.calendar``); ``gap_ns`` is the longest silence
    inside a session before the state is reset with reason GAP; ``warmup_ticks`` is how many ticks
    after any reset the strategy may not open positions.
    """

    symbol: str
    venue: str = "SIM"
    tick_size: float = 0.01
    lot_size: float = 1.0
    calendar: str = "24x7"
    gap_ns: int = 60 * SECOND_NS
    warmup_ticks: int = 50

    def __post_init__(self) -> None:
        if not self.symbol:
            raise ValueError("Instrument.symbol must be non-empty")
        if not (self.tick_size > 0 and self.lot_size > 0):
            raise ValueError(f"{self.symbol}: tick_size and lot_size must be positive")
        if self.gap_ns <= 0 or self.warmup_ticks < 0:
            raise ValueError(f"{self.symbol}: gap_ns must be positive and warmup_ticks non-negative")
        SessionCalendar.parse(self.calendar)  # fail at construction, not mid-replay

    @property
    def key(self) -> str:
        return f"{self.venue}:{self.symbol}"


class InstrumentTable:
    """Ordered instruments; an instrument's index is its ``Quote.instrument`` id."""

    def __init__(self, instruments: Iterable[Instrument] = ()) -> None:
        self._items: list[Instrument] = []
        self._by_symbol: dict[str, int] = {}
        for inst in instruments:
            self.add(inst)

    def add(self, inst: Instrument) -> int:
        if inst.symbol in self._by_symbol:
            raise ValueError(f"duplicate instrument symbol {inst.symbol!r}")
        self._by_symbol[inst.symbol] = len(self._items)
        self._items.append(inst)
        return len(self._items) - 1

    def id_of(self, symbol: str) -> int:
        try:
            return self._by_symbol[symbol]
        except KeyError:
            raise KeyError(f"unknown symbol {symbol!r}; known: {', '.join(self._by_symbol) or 'none'}") from None

    def get(self, symbol: str) -> int | None:
        return self._by_symbol.get(symbol)

    def __getitem__(self, idx: int) -> Instrument:
        return self._items[idx]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Instrument]:
        return iter(self._items)

    @property
    def symbols(self) -> list[str]:
        return [i.symbol for i in self._items]

    def calendars(self) -> list[SessionCalendar]:
        return [SessionCalendar.parse(i.calendar) for i in self._items]

    def to_json(self) -> bytes:
        return msgspec.json.encode(self._items)

    @classmethod
    def from_json(cls, data: bytes) -> "InstrumentTable":
        return cls(msgspec.json.decode(data, type=list[Instrument]))
