"""Reconnect delays: exponential, capped, jittered, unlimited, and forgiven only after a stable period.

The n-th consecutive failed attempt waits ``min(cap_s, base_s * 2**n)`` scaled by a uniform factor in
``[1 - jitter, 1]`` (jitter spreads a crowd of clients that lost the same server). The failure count
goes back to zero only once a connection has stayed up for ``stable_s``: a server that accepts and then
drops every connection at once keeps the delays growing instead of being hammered at the base rate.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(
        self,
        base_s: float = 0.25,
        cap_s: float = 30.0,
        stable_s: float = 60.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if not (0 < base_s <= cap_s):
            raise ValueError(f"backoff needs 0 < base_s <= cap_s, got base_s={base_s}, cap_s={cap_s}")
        if not (0.0 <= jitter < 1.0) or stable_s < 0:
            raise ValueError("backoff needs 0 <= jitter < 1 and stable_s >= 0")
        self.base_s = base_s
        self.cap_s = cap_s
        self.stable_s = stable_s
        self.jitter = jitter
        self.rng = rng or random.Random()
        self.failures = 0  # consecutive attempts since the last stable connection
        self._up_since: float | None = None

    def next_delay(self, retry_after_s: float | None = None) -> float:
        """Seconds to wait before the next attempt; counts the attempt. ``retry_after_s`` (a venue's
        Retry-After) is a floor."""
        raw = min(self.cap_s, self.base_s * 2.0 ** min(self.failures, 60))
        self.failures += 1
        delay = raw * (1.0 - self.jitter * self.rng.random())
        return max(delay, retry_after_s or 0.0)

    def connected(self, now_s: float) -> None:
        self._up_since = now_s

    def disconnected(self, now_s: float) -> None:
        """The connection ended; if it had been up for ``stable_s`` the failure count starts over."""
        if self._up_since is not None and now_s - self._up_since >= self.stable_s:
            self.failures = 0
        self._up_since = None
