"""Counting the samples a source could not make, so bad rows cost a sample, not the run.

Half a million scraped rows always hold a few broken ones (an empty answer, a truncated
``answer_snac``); crashing on the first would stop a multi-day job, and dropping them silently would
hide a config that points at the wrong column. A `SkipCounter` keeps both visible: counts per
(source, reason), the first few examples with their source and row, and `check` turns "too many"
into a clear `TooManySkips` error.

The unit is a *sample attempt*: a row that should give two tasks (say A1A2 and A1T2) is two attempts,
and a broken ``answer_snac`` skips only the one that needs audio, so `fraction` stays in ``[0, 1]``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skip:
    """One skipped sample, kept as an example for error messages."""

    source: str
    row: str | int
    reason: str  # short and stable ("bad answer_snac", "empty answer"): the key counts are kept under
    detail: str = ""  # the specific problem, e.g. SnacFormatError's message
    task: str | None = None

    def __str__(self) -> str:
        task = f" ({self.task})" if self.task else ""
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.source} row {self.row!r}{task}: {self.reason}{detail}"


class TooManySkips(RuntimeError):
    """More samples were skipped than the configured fraction allows: usually a config or data mistake."""


class SkipCounter:
    """Counts sample attempts and skips per source; keeps the first `max_examples` skips per (source, reason).

    Picklable and mergeable, so that DataLoader workers can each count and a parent can `merge` them.
    """

    def __init__(self, max_examples: int = 3) -> None:
        self.max_examples = max_examples
        self.attempts: Counter[str] = Counter()  # source -> samples attempted (made or skipped)
        self.skipped: Counter[tuple[str, str]] = Counter()  # (source, reason) -> samples skipped
        self.examples: list[Skip] = []

    def seen(self, source: str, n: int = 1) -> None:
        """Count `n` sample attempts of `source` (call it for every attempt, skipped or not)."""
        self.attempts[source] += n

    def skip(self, source: str, row: str | int, reason: str, detail: str = "", task: str | None = None) -> None:
        """Count one skipped attempt; the first few per (source, reason) are kept and the first is logged."""
        key = (source, reason)
        self.skipped[key] += 1
        if self.skipped[key] <= self.max_examples:
            example = Skip(source, row, reason, detail, task)
            self.examples.append(example)
            if self.skipped[key] == 1:
                log.warning("skipping %s (further skips of this kind are only counted)", example)

    def n_seen(self, source: str | None = None) -> int:
        return self.attempts[source] if source is not None else sum(self.attempts.values())

    def n_skipped(self, source: str | None = None) -> int:
        return sum(n for (src, _), n in self.skipped.items() if source is None or src == source)

    def fraction(self, source: str | None = None) -> float:
        """Skipped / attempted, for one source or all of them; 0.0 before any attempt."""
        seen = self.n_seen(source)
        return self.n_skipped(source) / seen if seen else 0.0

    def check(self, max_fraction: float, source: str | None = None, min_seen: int = 0) -> None:
        """Raise `TooManySkips` if more than `max_fraction` of the attempts were skipped.

        Args:
            max_fraction: the largest tolerated share of skipped attempts, in ``[0, 1]``.
            source: check one source; by default each source is checked on its own, so that a
                small, entirely broken source is not hidden by a large healthy one.
            min_seen: do not judge a source on fewer attempts than this (the first row alone
                should not decide).
        """
        sources = [source] if source is not None else sorted(self.attempts)
        for src in sources:
            seen, frac = self.n_seen(src), self.fraction(src)
            if seen >= max(min_seen, 1) and frac > max_fraction:
                raise TooManySkips(
                    f"{src}: skipped {self.n_skipped(src):,} of {seen:,} samples ({frac:.1%}), "
                    f"more than the allowed {max_fraction:.1%}; {self.summary(src)}"
                )

    def merge(self, other: SkipCounter) -> SkipCounter:
        """Add `other`'s counts (e.g. a DataLoader worker's) into this counter; returns self."""
        self.attempts.update(other.attempts)
        for key, n in other.skipped.items():
            kept = sum(1 for e in self.examples if (e.source, e.reason) == key)
            new = [e for e in other.examples if (e.source, e.reason) == key]
            self.examples.extend(new[: max(0, self.max_examples - kept)])
            self.skipped[key] += n
        return self

    def summary(self, source: str | None = None) -> str:
        """One line: counts per reason, then the kept examples."""
        counts = [f"{r} {n:,}" for (s, r), n in sorted(self.skipped.items()) if source in (None, s)]
        if not counts:
            return "nothing skipped"
        examples = [str(e) for e in self.examples if source in (None, e.source)]
        return "reasons: " + ", ".join(counts) + "; examples: " + " | ".join(examples)

    def __repr__(self) -> str:
        return f"SkipCounter(seen={self.n_seen()}, skipped={self.n_skipped()})"
