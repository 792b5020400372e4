"""Venue websocket protocols (one module each) and the registry the CLI and the feed look names up in."""

from __future__ import annotations

import importlib

from feeds.venues.base import FrameError, FrameKind, SeqMode, Venue, VenueQuote

# name -> "module:Class"; imported on first use so a venue's module loads only when asked for.
_REGISTRY = {
    "binance-spot": "feeds.venues.binance:BinanceSpot",
    "binance-usdm": "feeds.venues.binance:BinanceUsdm",
    "bybit-linear": "feeds.venues.bybit:BybitLinear",
    "bybit-spot": "feeds.venues.bybit:BybitSpot",
    "okx": "feeds.venues.okx:Okx",
    "kraken": "feeds.venues.kraken:Kraken",
}
VENUE_NAMES: tuple[str, ...] = tuple(_REGISTRY)
ALIASES = {"binance": "binance-spot", "bybit": "bybit-linear"}


def get_venue(name: str) -> Venue:
    """The protocol object for a venue name (``binance-usdm``, ``bybit-linear``, ...)."""
    key = ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise ValueError(f"unknown venue {name!r}; known: {', '.join(VENUE_NAMES)}")
    module, _, cls = _REGISTRY[key].partition(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["ALIASES", "VENUE_NAMES", "FrameError", "FrameKind", "SeqMode", "Venue", "VenueQuote", "get_venue"]
