"""Raw websocket recordings (``<recv_ns> <frame>`` lines) as a vendor format: ``feeds.raw_replay``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from feeds.raw_replay import RawReplay, list_files

_LINE = re.compile(rb"^\d{10,19} [#{\[]")


def sniff(path: Path, head: bytes) -> bool:
    """A file whose first line is ``<stamp> <frame>``, or a folder whose recordings all are."""
    if path.is_dir():
        from feeds.vendors import head_of

        files = list_files(path)
        return bool(files) and all(_LINE.match(head_of(f)) for f in files)
    return bool(_LINE.match(head))


def reader(path: Path, *, venue: str | None = None, policy=None, instrument_defaults: dict | None = None, **_: Any) -> RawReplay:
    return RawReplay(path, venue, policy=policy, instrument_defaults=instrument_defaults)
