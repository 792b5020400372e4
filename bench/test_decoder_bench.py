"""Live decoders: frames/s from a venue's wire text to quote rows (FrameNormalizer.on_frame: decode,
symbol lookup, sequence checks, flags, packing), per venue, frames pre-encoded as the simulator sends
them. One thread; figures in extra_info and printed, not asserted."""

from __future__ import annotations

import time

import pytest

from bench.conftest import record_rate
from feeds.normalize import FrameNormalizer
from feeds.venues import get_venue

N_FRAMES = 200_000
SYMBOLS = {"binance-usdm": ["BTCUSDT", "ETHUSDT"], "bybit-linear": ["BTCUSDT", "ETHUSDT"],
           "okx": ["BTC-USDT", "ETH-USDT"], "kraken": ["BTC/USD", "ETH/USD"]}


def frames(venue: str, n: int) -> list[bytes]:
    v = get_venue(venue)
    syms = SYMBOLS[venue]
    t0 = 1_795_000_000_000_000_000
    out = []
    for k in range(n):
        mid = 60_000.0 + (k % 500) * 0.1
        out.append(v.encode_quote(syms[k % 2], mid - 0.05, 1.5, mid + 0.05, 2.5, ts_event_ns=t0 + k * 1_000_000,
                                  seq=k // 2 + 1, px_decimals=2, sz_decimals=3).encode())
    return out


@pytest.mark.parametrize("venue", list(SYMBOLS))
def test_decode_frames(benchmark, venue):
    data = frames(venue, N_FRAMES)
    ids = {s: k for k, s in enumerate(SYMBOLS[venue])}

    def decode():
        norm = FrameNormalizer(get_venue(venue), ids)
        t = time.perf_counter()
        on_frame = norm.on_frame
        for k, f in enumerate(data):
            on_frame(f, k + 1)
            if k % 4096 == 4095:
                norm.take()
        norm.take()
        return time.perf_counter() - t, norm.counters

    dt, counters = benchmark.pedantic(decode, rounds=3, iterations=1)
    assert counters.quotes == N_FRAMES  # every frame became a quote (a sanity check, not a speed assert)
    rate = N_FRAMES / dt
    benchmark.extra_info.update(frames_per_s=rate, us_per_frame=1e6 / rate)
    record_rate("live decode", venue, rate, unit="frames/s")
    print(f"\n{venue}: {rate / 1e3:,.0f}k frames/s ({1e6 / rate:.2f} us/frame)")
