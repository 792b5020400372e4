"""``nextick ingest SRC... --catalog DIR``: vendor files into a Parquet catalog (``feeds.catalog``).

Each argument is a file or a folder. A folder that a reader takes whole (a raw recording folder, a
LOBSTER message/orderbook folder) is one source; any other folder stands for the sources in it:
every file a reader recognizes, and every subfolder treated the same way. A folder holding files
that are, each on its own, of different formats is never one source. Files no reader recognizes (a
README, a checksum list) are skipped with a note. Hidden entries, the catalog folder and any other
catalog folder are never read.

One line is printed per source (rows read, quotes written, pace, quarantined rows by rule, or
"already ingested"), then a total line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from feeds.catalog import MANIFEST, Catalog, IngestReport
from feeds.vendors.options import ReaderOptions


def _show(path: Path | str) -> str:
    p = Path(path)
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(d.items(), key=lambda kv: (-kv[1], kv[0])))


def _pace(n: int, s: float) -> str:
    if s <= 0:
        return "n/a"
    r = n / s
    return f"{r / 1e6:.2f}M" if r >= 1e6 else f"{r / 1e3:.1f}k"


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def format_report(r: IngestReport) -> list[str]:
    """The summary line (and note lines) of one source."""
    name = _show(r.path)
    if r.already_ingested:
        also = f", as {_show(r.same_as)}" if r.same_as else ""
        lines = [f"already   {name}: already ingested (sha256 {r.sha256[:12]}{also})"]
    else:
        n_inst = len(r.instruments)
        line = (
            f"{r.status:<9} {name} [{r.format}]: {r.rows_read:,} rows read -> {r.rows_written:,} quotes, "
            f"{n_inst} instrument{'s' if n_inst != 1 else ''}, {r.partitions} partition{'s' if r.partitions != 1 else ''}, "
            f"{_bytes(r.bytes_written)} in {r.elapsed_s:.2f} s ({_pace(r.rows_read, r.elapsed_s)} rows/s)"
        )
        if r.ts_unit:
            line += f", timestamps in {r.ts_unit}"
        lines = [line]
        total_q = sum(r.quarantined.values())
        if total_q:
            lines.append(f"          quarantined {total_q:,}: {_counts(r.quarantined)}")
        if r.skipped:
            lines.append(f"          skipped (not quotes) {sum(r.skipped.values()):,}: {_counts(r.skipped)}")
        if r.replaced_sha256:
            lines.append(f"          replaced the earlier content of this path (sha256 {r.replaced_sha256[:12]})")
    lines += [f"          note: {n}" for n in r.notes]
    return lines


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def expand(
    paths: list[Path], catalog_dir: Path, *, fmt: str | None = None, options: ReaderOptions = ReaderOptions()
) -> tuple[list[Path], list[str]]:
    """(the sources the arguments stand for, notes on what was skipped). Files named directly are
    always sources (a file no reader takes fails at ingest); files found in folders are sources
    only when a reader recognizes them and accepts them with ``options``."""
    from feeds.vendors import FORMATS, detect, head_of, module, open_source

    sources: list[Path] = []
    notes: list[str] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            sources.append(p)

    def whole_folder(d: Path) -> bool:
        """A folder a reader takes whole: its format's reader says so, and no file in it is, on its
        own, of another format (a folder of mixed vendor files is walked instead)."""
        try:
            if fmt is None:
                name = detect(d)
            elif module(fmt).sniff(d, b""):
                name = fmt
            else:
                return False
        except Exception:  # noqa: BLE001 - a probe: a reader that chokes on the folder does not take it
            return False
        for f in sorted(d.rglob("*")):
            if not f.is_file() or any(part.startswith(".") for part in f.relative_to(d).parts):
                continue
            try:
                other = detect(f)
            except Exception:  # noqa: BLE001, S112 - a README, a checksum list: not the folder's business
                continue
            if other != name:
                return False
        return True

    def accepts(f: Path) -> str | None:
        """None when a reader takes ``f``, else why not."""
        try:
            name = fmt or detect(f)
            if fmt is not None and not module(fmt).sniff(f, head_of(f)):
                return f"not {fmt}"
            open_source(f, name, options)  # reads the header only
        except Exception as exc:  # noqa: BLE001 - a probe: whatever a reader makes of the file is a note here
            text = str(exc) or type(exc).__name__
            if "not a format nextick recognizes" in text:
                return f"not a recognized format ({', '.join(FORMATS)})"
            return text.splitlines()[0][:160]
        return None

    def walk(d: Path) -> None:
        for entry in sorted(d.iterdir()):
            if entry.name.startswith(".") or _is_within(entry, catalog_dir):
                continue
            if entry.is_dir():
                if (entry / MANIFEST).is_file():
                    notes.append(f"skipped   {_show(entry)}: a catalog folder")
                elif whole_folder(entry):
                    add(entry)
                else:
                    walk(entry)
            elif entry.is_file():
                why = accepts(entry)
                if why is None:
                    add(entry)
                else:
                    notes.append(f"skipped   {_show(entry)}: {why}")

    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or directory")
        if p.is_dir():
            if p.resolve() == catalog_dir.resolve():
                notes.append(f"skipped   {_show(p)}: it is the catalog folder")
                continue
            if whole_folder(p):
                add(p)
            else:
                walk(p)
        else:
            add(p)
    return sources, notes


def ingest(
    paths: list[Path],
    catalog_dir: Path,
    *,
    fmt: str | None = None,
    print_fn: Callable[[str], None] | None = print,
    options: ReaderOptions | None = None,
    **option_values: Any,
) -> list[IngestReport]:
    """Ingest ``paths`` (files and folders, see the module docstring) into the catalog at
    ``catalog_dir``, printing a line per source and a total. Every reader gets ``options`` with
    ``option_values`` set (``policy=``, ``venue=``, ``symbol=``, ``instrument_defaults=``, ...: the
    fields of ``feeds.vendors.options.ReaderOptions``); an unknown name is refused before any file
    is read."""
    opts = ReaderOptions.build(options, **option_values)
    out = print_fn or (lambda _line: None)
    catalog_dir = Path(catalog_dir)
    catalog = Catalog(catalog_dir)
    t0 = time.perf_counter()
    sources, notes = expand([Path(p) for p in paths], catalog_dir, fmt=fmt, options=opts)
    for n in notes:
        out(n)
    if not sources:
        out(f"total     no sources to ingest into {_show(catalog_dir)}")
        return []
    reports: list[IngestReport] = []
    for src in sources:
        r = catalog.ingest(src, fmt=fmt, options=opts)
        for line in format_report(r):
            out(line)
        reports.append(r)
    wall = time.perf_counter() - t0
    by_status: dict[str, int] = {}
    for r in reports:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    rows = sum(r.rows_read for r in reports)
    quotes = sum(r.rows_written for r in reports)
    quarantined: dict[str, int] = {}
    for r in reports:
        for k, v in r.quarantined.items():
            quarantined[k] = quarantined.get(k, 0) + v
    busy = sum(r.elapsed_s for r in reports if not r.already_ingested)
    line = (
        f"total     {len(reports)} source{'s' if len(reports) != 1 else ''} "
        f"({', '.join(f'{v} {k}' for k, v in by_status.items())}): {rows:,} rows read -> {quotes:,} quotes "
        f"in {wall:.2f} s" + (f" ({_pace(rows, busy)} rows/s while reading)" if rows else "")
    )
    if quarantined:
        line += f"; quarantined {sum(quarantined.values()):,}: {_counts(quarantined)}"
    skipped = len(notes)
    if skipped:
        line += f"; {skipped} entr{'ies' if skipped != 1 else 'y'} skipped"
    out(line)
    out(f"catalog   {_show(catalog_dir)}: {len(catalog.instruments())} instruments, {len(catalog.sources())} sources")
    return reports
