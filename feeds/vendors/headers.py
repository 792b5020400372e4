"""What a vendor file's first line and name say: the header's fields, whether a field is a number
(a header row or a data row?), and the name without its compression and data suffixes (where
symbols come from). ``sniff`` and ``reader`` of every format use them."""

from __future__ import annotations

import re
from pathlib import Path

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


def base_name(path: Path) -> str:
    """The file name without compression and data suffixes: ``X.csv.gz`` -> ``X``."""
    name = path.name
    for suffix in (".gz", ".zip", ".csv", ".txt"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name
