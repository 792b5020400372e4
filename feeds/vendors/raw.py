"""Raw websocket recordings (``<recv_ns> <frame>`` lines) as a vendor format: ``feeds.raw_replay``."""

from __future__ import annotations

import re
from pathlib import Path

from feeds.raw_replay import RawReplay, list_files
from feeds.vendors.options import ReaderOptions

_LINE = re.compile(rb"^\d{10,19} [#{\[]")


def sniff(path: Path, head: bytes) -> bool:
    """A file whose first line is ``<stamp> <frame>``, or a folder whose recordings all are."""
    if path.is_dir():
        from feeds.vendors import head_of

        files = list_files(path)
        return bool(files) and all(_LINE.match(head_of(f)) for f in files)
    return bool(_LINE.match(head))


def reader(path: Path, options: ReaderOptions = ReaderOptions()) -> RawReplay:
    """Options it reads: ``venue`` (when the recordings' names do not say), ``policy``,
    ``instrument_defaults``."""
    return RawReplay(
        path, options.venue, policy=options.validation_policy(), instrument_defaults=options.instrument_defaults
    )
