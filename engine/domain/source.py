"""What every quote source gives the engine: an instrument table and time-ordered quote chunks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import msgspec
import numpy as np

from engine.domain.instrument import InstrumentTable


class SourceStats(msgspec.Struct, kw_only=True):
    """Counters a source fills while it streams; shown in the run summary.

    ``quarantined`` maps a validation rule (``crossed``, ``locked``, ``nan``, ``negative``,
    ``out_of_order``, ``duplicate``, ``future``, ``unknown_symbol``, ``malformed``) to the
    number of rows set aside under it. ``ts_unit`` is the timestamp unit the reader saw.
    """

    source: str = ""
    rows_read: int = 0
    rows_emitted: int = 0
    quarantined: dict[str, int] = msgspec.field(default_factory=dict)
    # Rows read and set aside on purpose, not errors: a raw recording's depth and trade frames, by stream.
    skipped: dict[str, int] = msgspec.field(default_factory=dict)
    ts_unit: str | None = None
    ts_unit_detected: bool = False

    def quarantine(self, rule: str, n: int = 1) -> None:
        if n:
            self.quarantined[rule] = self.quarantined.get(rule, 0) + int(n)

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())


@runtime_checkable
class QuoteSource(Protocol):
    """A stream of quotes.

    ``chunks()`` yields ``QUOTE_DTYPE`` arrays whose ``ts_recv`` never decreases, within a chunk
    and across chunks, and whose ``instrument`` ids index ``instruments``. Chunks are bounded in
    size so a source larger than memory streams in bounded memory.
    """

    instruments: InstrumentTable
    stats: SourceStats

    def chunks(self) -> Iterator[np.ndarray]: ...
