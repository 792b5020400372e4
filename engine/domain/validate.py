"""Bad-input rules for quote streams: every reader and decoder runs its quotes through here.

Each rule has an explicit action (DESIGN.md "Bad input"): ``reject`` stops the stream with a
``BadInputError`` that names the source, the line, the field, the rule and the value; ``quarantine``
sets the row aside and counts it in ``SourceStats.quarantined``, which the run summary shows.
Nothing is dropped silently.

A bad row is counted under exactly one rule: the first in ``RULES`` order that it fails.
``malformed`` and ``unknown_symbol`` concern rows that never became quotes, so readers count them
through ``QuoteValidator.reject_or_count``; ``QuoteValidator.check`` applies the rest to quote
chunks, vectorized, with the sequential state (``out_of_order``, ``duplicate``) carried across
chunks so chunk boundaries never change the outcome.
"""

from __future__ import annotations

import time

import msgspec
import numpy as np

from engine.domain.quote import QUOTE_DTYPE, concat_rows, take_rows
from engine.domain.source import SourceStats
from engine.domain.timestamps import MINUTE_NS

RULES = (
    "malformed",  # the reader could not turn the row into a quote (field count, non-numeric text)
    "unknown_symbol",  # the symbol is not in a fixed instrument table
    "nan",  # a price or size is NaN (or infinite)
    "negative",  # a price < 0, a size < 0, a zero price with a size, or no side at all
    "crossed",  # bid_px > ask_px
    "locked",  # bid_px == ask_px
    "future",  # ts_recv later than now + tolerance: a clock or unit error upstream
    "out_of_order",  # ts_recv earlier than the last kept quote's: the engine needs a non-decreasing stream
    "duplicate",  # same instrument, ts_recv, prices and sizes as that instrument's last kept quote
)
ACTIONS = ("reject", "quarantine")

_EXPLAIN = {
    "malformed": "the row could not be parsed into a quote",
    "unknown_symbol": "the symbol is not in the instrument table",
    "nan": "prices and sizes must be finite numbers",
    "negative": "prices must be > 0 and sizes >= 0 (a missing side has price 0 and size 0)",
    "crossed": "bid_px is above ask_px",
    "locked": "bid_px equals ask_px",
    "future": "ts_recv is later than now plus the future tolerance (a clock or timestamp-unit error?)",
    "out_of_order": "ts_recv is earlier than the previous kept quote's; the stream must not go back in time",
    "duplicate": "the quote repeats its instrument's previous quote (same ts_recv, prices and sizes)",
}

_PRICE_FIELDS = ("bid_px", "ask_px")
_SIZE_FIELDS = ("bid_sz", "ask_sz")
_VALUE_FIELDS = _PRICE_FIELDS + _SIZE_FIELDS
_I64_MAX = np.iinfo(np.int64).max
_I64_MIN = np.iinfo(np.int64).min


_SMALL = 8  # batches up to this many rows try the scalar path first


def _clean(bid, ask, bsz, asz, ts, future_limit_ns):
    """Rows that break no stateless rule: numpy arrays in, a bool mask out (in place, one pass per
    condition); Python scalars in, a bool out. NaN fails every comparison. A quote is two-sided
    (0 < bid < ask) or one-sided: the missing side has price 0 and size 0 (``QuoteFlag.ONE_SIDED``;
    the engine fills nothing against it and its features stay defined)."""
    ok = bsz >= 0
    ok &= bsz < np.inf
    ok &= asz >= 0
    ok &= asz < np.inf
    ok &= bid < np.inf
    ok &= ask < np.inf
    ok &= ts <= future_limit_ns
    two = bid > 0
    two &= ask > bid
    no_bid = bid == 0
    no_bid &= bsz == 0
    no_bid &= ask > 0
    no_ask = ask == 0
    no_ask &= asz == 0
    no_ask &= bid > 0
    ok &= two | no_bid | no_ask
    return ok


class BadInputError(ValueError):
    """A row broke a rule whose action is ``reject``.

    ``kept`` holds the quotes of the failing chunk that came before the offending row and passed
    validation, so a caller that wants to keep going (a live feed) loses nothing it was given.
    """

    def __init__(
        self,
        source: str,
        line: int | None,
        field: str,
        rule: str,
        value: object,
        detail: str = "",
        kept: np.ndarray | None = None,
    ) -> None:
        self.source = source
        self.line = line
        self.field = field
        self.rule = rule
        self.value = value
        self.kept = kept
        where = f"{source}:{line}" if line is not None else source
        why = detail or _EXPLAIN.get(rule, rule)
        super().__init__(
            f"{where}: field {field!r} = {value!r} breaks rule {rule!r} ({why}). "
            f"Fix or remove that row at the source, or set the policy to '{rule}=quarantine' "
            f"to set such rows aside and count them in the run summary."
        )


class ValidationPolicy(msgspec.Struct):
    """What to do with each rule's bad rows: ``"reject"`` or ``"quarantine"`` (the default)."""

    actions: dict[str, str] = msgspec.field(default_factory=lambda: dict.fromkeys(RULES, "quarantine"))
    future_tolerance_ns: int = 5 * MINUTE_NS

    def __post_init__(self) -> None:
        for rule, action in self.actions.items():
            _check_rule(rule)
            _check_action(action, rule)
        # Rules not named keep the default so `action()` never has to guess.
        for rule in RULES:
            self.actions.setdefault(rule, "quarantine")
        if self.future_tolerance_ns < 0:
            raise ValueError("future_tolerance_ns must be >= 0")

    @classmethod
    def parse(cls, text: str, *, future_tolerance_ns: int = 5 * MINUTE_NS) -> "ValidationPolicy":
        """``"reject"``, ``"quarantine"``, ``"crossed=reject,locked=quarantine"`` or a mix such as
        ``"reject,duplicate=quarantine"`` (a bare action sets every rule; later items override)."""
        actions = dict.fromkeys(RULES, "quarantine")
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            if "=" in item:
                rule, _, action = (s.strip() for s in item.partition("="))
                action = action.lower()
                if rule == "all":
                    _check_action(action, rule)
                    actions = dict.fromkeys(RULES, action)
                    continue
                _check_rule(rule)
                _check_action(action, rule)
                actions[rule] = action
            else:
                action = item.lower()
                _check_action(action, "all")
                actions = dict.fromkeys(RULES, action)
        return cls(actions=actions, future_tolerance_ns=future_tolerance_ns)

    def action(self, rule: str) -> str:
        return self.actions.get(rule, "quarantine")

    def rejects(self, rule: str) -> bool:
        return self.actions.get(rule, "quarantine") == "reject"


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown validation rule {rule!r}; valid rules: {', '.join(RULES)} (or 'all')")


def _check_action(action: str, rule: str) -> None:
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r} for rule {rule!r}; use 'reject' or 'quarantine'")


class QuoteValidator:
    """Applies a ``ValidationPolicy`` to a stream of quote chunks.

    Sequential rules, and why the vectorized form equals the row-by-row definition:

    * ``out_of_order``: row i is out of order when ``ts_recv[i] < M``, M being the largest ts_recv
      of the rows kept so far. A row set aside for being out of order is below M, so it would not
      have raised M anyway; a duplicate is never above M either. M before row i is therefore the
      running maximum of ts_recv over *all* earlier rows that passed the stateless rules, a
      ``np.maximum.accumulate``, whatever was quarantined. Rows that fail a stateless rule (nan,
      negative, crossed, locked, future) never enter M.
    * ``duplicate``: compared with the instrument's previous row that was not out of order. If that
      row was itself a duplicate it has the same compared fields as the kept row it repeated, so
      the comparison gives the same answer as against the last *kept* row. Because the surviving
      stream is non-decreasing, a duplicate must share its ts_recv with the row just before it, so
      only runs of equal ts_recv are examined (usually none, which is what keeps clean chunks fast).

    The state between chunks is M and the last row per instrument within the final run of equal
    ts_recv (all a later duplicate can match).
    """

    def __init__(self, policy: ValidationPolicy, stats: SourceStats, source: str, now_ns: int | None = None) -> None:
        self.policy = policy
        self.stats = stats
        self.source = source
        now_ns = time.time_ns() if now_ns is None else int(now_ns)
        # Clamp: a huge tolerance must not overflow int64.
        self.future_limit_ns = int(min(now_ns + policy.future_tolerance_ns, _I64_MAX))
        self._last_ts = _I64_MIN  # largest ts_recv that passed the stateless rules so far
        self._tail = np.zeros(0, dtype=QUOTE_DTYPE)  # last row per instrument with ts_recv == _last_ts

    # -- readers' rules --------------------------------------------------------------------------

    def reject_or_count(self, rule: str, n: int, line: int | None, field: str, value: object) -> None:
        """Count ``n`` rows a reader could not turn into quotes, or raise for the first of them
        (at ``line``, in ``field``, with ``value``) when the rule's action is reject."""
        _check_rule(rule)
        if n <= 0:
            return
        if self.policy.rejects(rule):
            raise BadInputError(self.source, line, field, rule, value)
        self.stats.quarantine(rule, n)

    # -- quote rules -----------------------------------------------------------------------------

    def check(self, quotes: np.ndarray, lines: np.ndarray) -> np.ndarray:
        """The rows of ``quotes`` that pass every rule, as a new array.

        ``lines`` gives each row's source line number, for error messages. Quarantined rows are
        counted in ``stats``; the first row (in stream order) that breaks a rule whose action is
        reject raises ``BadInputError`` after the rows before it have been accounted for.
        """
        if quotes.dtype != QUOTE_DTYPE:
            raise TypeError(f"expected QUOTE_DTYPE quotes, got {quotes.dtype}")
        n = len(quotes)
        lines = np.asarray(lines)
        if len(lines) != n:
            raise ValueError(f"lines has {len(lines)} entries for {n} quotes")
        if n == 0:
            return take_rows(quotes)

        if n <= _SMALL and self._small_clean(quotes):
            return take_rows(quotes)

        ok = _clean(quotes["bid_px"], quotes["ask_px"], quotes["bid_sz"], quotes["ask_sz"], quotes["ts_recv"],
                    self.future_limit_ns)
        ts = quotes["ts_recv"]

        all_ok = bool(ok.all())
        if all_ok:
            cand = None  # every row is a candidate
            tc = ts
        else:
            cand = np.flatnonzero(ok)
            tc = ts[cand]

        # out_of_order: ts below the running max of earlier candidates (and the carried state).
        ooo_c = None
        if len(tc):
            if tc[0] < self._last_ts or (len(tc) > 1 and not bool((tc[1:] >= tc[:-1]).all())):
                prev_max = np.empty(len(tc), dtype=np.int64)
                prev_max[0] = self._last_ts
                if len(tc) > 1:
                    np.maximum.accumulate(tc[:-1], out=prev_max[1:])
                    np.maximum(prev_max[1:], self._last_ts, out=prev_max[1:])
                ooo_c = tc < prev_max
        if ooo_c is not None:
            base = np.arange(n) if cand is None else cand
            seq_idx = base[~ooo_c]  # rows in order: candidates that are not out of order
        else:
            seq_idx = cand  # None means all rows

        dup_rows = self._duplicates(quotes, seq_idx)

        if all_ok and ooo_c is None and dup_rows is None:
            self._advance(quotes, None)
            return take_rows(quotes)

        # Slow path: label each bad row with its first failing rule.
        rule_of = np.zeros(n, dtype=np.int8)  # 0 = kept; else 1 + index in RULES
        if not all_ok:
            bad = np.flatnonzero(~ok)
            rule_of[bad] = self._stateless_rules(take_rows(quotes, bad))
        if ooo_c is not None:
            base = np.arange(n) if cand is None else cand
            rule_of[base[ooo_c]] = RULES.index("out_of_order") + 1
        if dup_rows is not None:
            rule_of[dup_rows] = RULES.index("duplicate") + 1

        # The first row that breaks a rejecting rule ends the chunk there.
        reject_codes = [i + 1 for i, r in enumerate(RULES) if self.policy.rejects(r)]
        if reject_codes:
            hits = np.flatnonzero(np.isin(rule_of, reject_codes))
            if len(hits):
                p = int(hits[0])
                # Rows before p are classified the same without the rows after them, so
                # re-checking the prefix accounts for them and advances the state exactly.
                kept = self.check(quotes[:p], lines[:p])
                rule = RULES[rule_of[p] - 1]
                field, value, detail = self._describe(quotes[p], rule)
                raise BadInputError(self.source, int(lines[p]), field, rule, value, detail, kept=kept)

        counts = np.bincount(rule_of, minlength=len(RULES) + 1)
        for i, rule in enumerate(RULES):
            self.stats.quarantine(rule, int(counts[i + 1]))
        keep = rule_of == 0
        self._advance(quotes, seq_idx)
        return take_rows(quotes, keep)

    # -- helpers ---------------------------------------------------------------------------------

    def _small_clean(self, quotes: np.ndarray) -> bool:
        """A few rows (the live path's usual batch), all clean and strictly later than everything
        before them: then no rule can apply, and scalar checks beat a dozen numpy calls. Anything
        else returns False and takes the general path. Advances the state when True."""
        last = self._last_ts
        limit = self.future_limit_ns
        for row in quotes.tolist():  # QUOTE_DTYPE order: ts_event, ts_recv, bid_px, ask_px, bid_sz, ask_sz, ...
            _, ts, bid, ask, bsz, asz = row[:6]
            if ts <= last or not _clean(bid, ask, bsz, asz, ts, limit):
                return False
            last = ts
        # Strictly increasing: the final run of equal ts_recv is the last row alone.
        self._tail = take_rows(quotes, slice(len(quotes) - 1, None))
        self._last_ts = last
        return True

    def _stateless_rules(self, q: np.ndarray) -> np.ndarray:
        """Rule code (1 + index in RULES) of the first stateless rule each row fails."""
        code = np.zeros(len(q), dtype=np.int8)
        bid, ask, bsz, asz, ts = q["bid_px"], q["ask_px"], q["bid_sz"], q["ask_sz"], q["ts_recv"]
        nan = ~(np.isfinite(bid) & np.isfinite(ask) & np.isfinite(bsz) & np.isfinite(asz))
        no_bid = (bid == 0) & (bsz == 0)
        no_ask = (ask == 0) & (asz == 0)
        neg = (bid < 0) | (ask < 0) | (bsz < 0) | (asz < 0)
        neg |= ((bid == 0) & ~no_bid) | ((ask == 0) & ~no_ask) | (no_bid & no_ask)
        both = ~no_bid & ~no_ask
        masks = (
            ("nan", nan),
            ("negative", neg),
            ("crossed", both & (bid > ask)),
            ("locked", both & (bid == ask)),
            ("future", ts > self.future_limit_ns),
        )
        for rule, mask in reversed(masks):  # earlier rules overwrite later ones: first rule wins
            code[mask] = RULES.index(rule) + 1
        return code

    def _duplicates(self, quotes: np.ndarray, seq_idx: np.ndarray | None) -> np.ndarray | None:
        """Row indices (into ``quotes``) of duplicates among the in-order rows, or None."""
        ts = quotes["ts_recv"] if seq_idx is None else quotes["ts_recv"][seq_idx]
        m = len(ts)
        if m == 0:
            return None
        # A duplicate shares ts_recv with the row just before it (non-decreasing stream), so only
        # runs of equal ts_recv (including one continuing the previous chunk) can hold one.
        same_prev = np.empty(m, dtype=bool)
        same_prev[0] = ts[0] == self._last_ts and len(self._tail) > 0
        np.equal(ts[1:], ts[:-1], out=same_prev[1:])
        if not same_prev.any():
            return None
        in_run = same_prev.copy()
        in_run[:-1] |= same_prev[1:]
        pos = np.flatnonzero(in_run)
        rows = pos if seq_idx is None else seq_idx[pos]
        sub = take_rows(quotes, rows)
        if same_prev[0]:
            tail = self._tail
            sub = concat_rows([tail, sub])
            rows = np.concatenate([np.full(len(tail), -1, dtype=np.int64), rows.astype(np.int64)])
        inst = sub["instrument"]
        order = np.argsort(inst, kind="stable")  # stable keeps stream order within an instrument
        s = take_rows(sub, order)
        same = s["instrument"][1:] == s["instrument"][:-1]
        for f in ("ts_recv",) + _VALUE_FIELDS:
            same &= s[f][1:] == s[f][:-1]
        if not same.any():
            return None
        dup = rows[order][1:][same]
        dup = dup[dup >= 0]  # the carried tail rows were judged in their own chunk
        return np.sort(dup) if len(dup) else None

    def _advance(self, quotes: np.ndarray, seq_idx: np.ndarray | None) -> None:
        """Carry the sequential state past this chunk's in-order rows."""
        if seq_idx is None:
            seq = quotes
        else:
            if len(seq_idx) == 0:
                return
            seq = take_rows(quotes, seq_idx)
        if len(seq) == 0:
            return
        last_ts = int(seq["ts_recv"][-1])  # in-order rows are non-decreasing
        start = int(np.searchsorted(seq["ts_recv"], last_ts, side="left"))
        run = seq[start:]
        if last_ts == self._last_ts and len(self._tail):
            run = concat_rows([self._tail, run])
        # Last row per instrument within the run.
        inst_rev = run["instrument"][::-1]
        _, first_rev = np.unique(inst_rev, return_index=True)
        last_idx = np.sort(len(run) - 1 - first_rev)
        self._tail = take_rows(run, last_idx)
        self._last_ts = last_ts

    def _describe(self, row: np.void, rule: str) -> tuple[str, object, str]:
        """(field, value, detail) for the error message about ``row`` breaking ``rule``."""
        if rule == "nan":
            field = next(f for f in _VALUE_FIELDS if not np.isfinite(row[f]))
            return field, float(row[field]), ""
        if rule == "negative":
            for f in _PRICE_FIELDS + _SIZE_FIELDS:
                if row[f] < 0:
                    return f, float(row[f]), "prices must be > 0 and sizes >= 0"
            if row["bid_px"] == 0 and row["ask_px"] == 0:
                return "bid_px", 0.0, "no bid and no ask: both sides missing"
            for px, sz in (("bid_px", "bid_sz"), ("ask_px", "ask_sz")):
                if row[px] == 0 and row[sz] != 0:
                    return px, 0.0, f"{px} is 0 with {sz} {float(row[sz])!r}; a missing side has price and size 0"
            return "bid_px", float(row["bid_px"]), "prices must be > 0"
        if rule in ("crossed", "locked"):
            op = ">" if rule == "crossed" else "=="
            return "bid_px", float(row["bid_px"]), f"bid_px {row['bid_px']!r} {op} ask_px {row['ask_px']!r}"
        if rule == "future":
            return "ts_recv", int(row["ts_recv"]), (
                f"ts_recv is {int(row['ts_recv']) - self.future_limit_ns} ns past now + tolerance; "
                "check the timestamp unit and the source clock"
            )
        if rule == "out_of_order":
            return "ts_recv", int(row["ts_recv"]), (
                f"ts_recv is earlier than the previous kept quote's ts_recv {self._last_ts}; "
                "the stream must not go back in time"
            )
        if rule == "duplicate":
            return "ts_recv", int(row["ts_recv"]), (
                f"instrument {int(row['instrument'])} repeats its previous quote: same ts_recv, "
                f"bid_px {row['bid_px']!r}, ask_px {row['ask_px']!r}, "
                f"bid_sz {row['bid_sz']!r}, ask_sz {row['ask_sz']!r}"
            )
        return rule, None, ""
