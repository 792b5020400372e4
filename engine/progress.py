"""A one-line progress display on stderr for long replays; silent when stderr is not a terminal."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(
        self, label: str, *, total: int | None = None, enabled: bool | None = None, stream=None, unit: str = "quotes"
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label = label
        self.total = total
        self.unit = unit
        self.note = ""
        self.done = 0
        self.t0 = time.perf_counter()
        self._last_draw = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and now - self._last_draw > 0.1:
            self._last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.t0, 1e-9)
        rate = self.done / elapsed
        if self.total:
            frac = min(self.done / self.total, 1.0)
            width = 30
            fill = int(frac * width)
            bar = "#" * fill + "-" * (width - fill)
            text = f"\r{self.label} [{bar}] {frac:6.1%} {self.done:,}/{self.total:,} {self.unit}  {rate:,.0f}/s{self.note}"
        else:
            text = f"\r{self.label} {self.done:,} {self.unit}  {rate:,.0f}/s  {elapsed:5.1f}s{self.note}"
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        if self.total:
            self.total = self.done  # the total was an estimate; the run is complete
        if self.enabled:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()
