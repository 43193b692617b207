"""Counting the samples a source could not make, so bad rows cost a sample, not the run.

Half a million scraped rows always hold a few broken ones (an empty answer, a truncated
``answer_snac``); crashing on the first would stop a multi-day job, and dropping them silently would
hide a config that points at the wrong column. A `SkipCounter` keeps both visible: counts per
(source, reason), the first few examples with their source and row, and `check` turns "too many"
into a clear `TooManySkips` error.

In a training run the counting happens in the DataLoader workers; each batch carries a snapshot of
its worker's counts, and `SkipReport` (a Lightning callback) turns the newest snapshots into the
stage's totals: a ``train/skipped`` metric, a log line per source at the end, the stage's summary.json.

The unit is a *sample attempt*: a row that should give two tasks (say A1A2 and A1T2) is two attempts,
and a broken ``answer_snac`` skips only the one that needs audio, so `fraction` stays in ``[0, 1]``.
A shard lost whole (a row group that fails midway, a later shard without a needed column) counts
every row it held.

Besides skips, the counter keeps *cuts*: clips longer than Whisper's 30 s window, cut to it
(``data.too_long=cut``). A cut sample is trained on, so it is no skip, but the user should know how
much audio never reached the model.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass

import lightning as L

from omni_train.distributed import gather_objects

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
    """More samples were skipped than the configured fraction allows, or a source makes none at all:
    usually a config or data mistake."""

    def __init__(self, message: str) -> None:
        # PyTorch re-raises a DataLoader worker's error as ``type(err)(its traceback as text)``; the
        # user needs only our sentence, the text after the traceback's last "TooManySkips: "
        name = type(self).__name__
        if message.startswith(f"Caught {name}"):
            message = message.rsplit(f"{name}: ", 1)[-1].strip()
        super().__init__(message)


class UnreadableData(TooManySkips):
    """Data a reader cannot get past, so that skipping cannot help: the run stops with one line
    naming the data (e.g. the datasets library's JSON reader stops at a byte that is not UTF-8)."""


class SkipCounter:
    """Counts sample attempts and skips per source; keeps the first `max_examples` skips per (source, reason).

    Picklable and mergeable, so that DataLoader workers can each count and a parent can `merge` them.
    """

    def __init__(self, max_examples: int = 3) -> None:
        self.max_examples = max_examples
        self.attempts: Counter[str] = Counter()  # source -> samples attempted (made or skipped)
        self.skipped: Counter[tuple[str, str]] = Counter()  # (source, reason) -> samples skipped
        self.examples: list[Skip] = []
        self.dropped_turns: Counter[str] = Counter()  # source -> earlier conversation turns left out to fit
        self.cuts: Counter[str] = Counter()  # source -> samples whose audio was cut to Whisper's window
        # kept for judging, per process (a snapshot or a merge need neither):
        self.streak: Counter[str] = Counter()  # source -> skips since its last sample was kept (see `Source`)
        self.bulk: Counter[str] = Counter()  # source -> rows beyond the first of skips that lost many at once

    def seen(self, source: str, n: int = 1) -> None:
        """Count `n` sample attempts of `source` (call it for every attempt, skipped or not)."""
        self.attempts[source] += n

    def skip(
        self, source: str, row: str | int, reason: str, detail: str = "", task: str | None = None, n: int = 1
    ) -> None:
        """Count `n` skipped attempts of one row (n > 1: a whole shard or row group); the first few
        per (source, reason) are kept as examples and the first is logged."""
        key = (source, reason)
        first = self.skipped[key] == 0
        self.skipped[key] += n
        self.streak[source] += 1
        self.bulk[source] += n - 1
        example = Skip(source, row, reason, detail, task)
        if self._keep(example) and first:
            log.warning("skipping %s (further skips of this kind are only counted)", example)

    def drop_turns(self, source: str, n: int) -> None:
        """Count `n` earlier turns of a conversation left out to fit max_seq_length (the sample was kept)."""
        self.dropped_turns[source] += n
    def cut(self, source: str, row: str | int, detail: str) -> None:
        """Count one sample whose audio was cut to Whisper's window; the first per source is logged."""
        self.cuts[source] += 1
        if self.cuts[source] == 1:
            log.warning("cutting %s row %r: %s (further cuts are only counted)", source, row, detail)

    def _keep(self, example: Skip) -> bool:
        """Keep the first `max_examples` distinct rows per (source, reason); a stream reads its bad rows again each pass."""
        same = [e for e in self.examples if (e.source, e.reason) == (example.source, example.reason)]
        if len(same) >= self.max_examples or any((e.row, e.task) == (example.row, example.task) for e in same):
            return False
        self.examples.append(example)
        return True

    def n_seen(self, source: str | None = None) -> int:
        return self.attempts[source] if source is not None else sum(self.attempts.values())

    def n_skipped(self, source: str | None = None) -> int:
        return sum(n for (src, _), n in self.skipped.items() if source is None or src == source)

    def fraction(self, source: str | None = None) -> float:
        """Skipped / attempted, for one source or all of them; 0.0 before any attempt."""
        seen = self.n_seen(source)
        return self.n_skipped(source) / seen if seen else 0.0

    def check(self, max_fraction: float, source: str | None = None, early: bool = False) -> None:
        """Raise `TooManySkips` if more than `max_fraction` of the attempts were skipped.

        Args:
            max_fraction: the largest tolerated share of skipped attempts, in ``[0, 1]``.
            source: check one source; by default each source is checked on its own, so that a
                small, entirely broken source is not hidden by a large healthy one.
            early: the attempts so far are a sample of the data, not all of it (mid-pass): stop
                only once the share is over `max_fraction` by more than chance (`clearly_over`),
                so that a healthy source whose first rows happen to hold a few bad ones runs on.
                Rows lost in bulk (a broken shard) count as one attempt here; the end of the
                pass judges them at their full weight.
        """
        sources = [source] if source is not None else sorted(self.attempts)
        for src in sources:
            seen, frac = self.n_seen(src), self.fraction(src)
            if early:
                over = clearly_over(self.n_skipped(src) - self.bulk[src], seen - self.bulk[src], max_fraction)
            else:
                over = seen >= 1 and frac > max_fraction
            if over:
                so_far = " so far" if early else ""
                raise TooManySkips(
                    f"{src}: skipped {self.n_skipped(src):,} of {seen:,} samples{so_far} ({frac:.1%}), "
                    f"more than the allowed {max_fraction:.1%}; {self.summary(src)}"
                )

    def check_streak(self, max_streak: int, source: str) -> None:
        """Raise `TooManySkips` once `max_streak` attempts in a row of `source` gave no sample: whatever
        the fraction allows (even none set), a source that makes nothing would stall the run."""
        if self.streak[source] >= max_streak:
            raise TooManySkips(
                f"{source}: the last {self.streak[source]:,} samples in a row were skipped, none made "
                f"({self.n_skipped(source):,} of {self.n_seen(source):,} skipped in all); {self.summary(source)}"
            )

    def merge(self, *others: SkipCounter) -> SkipCounter:
        """Add the counts of `others` (e.g. DataLoader workers') into this counter; returns self."""
        for other in others:
            self.attempts.update(other.attempts)
            self.skipped.update(other.skipped)
            self.dropped_turns.update(other.dropped_turns)
            self.cuts.update(other.cuts)
            for example in other.examples:
                self._keep(example)
        return self

    def copy(self) -> SkipCounter:
        return SkipCounter(self.max_examples).merge(self)

    def as_dict(self) -> dict:
        """Plain counts per source (for summary.json and checkpoints): seen, skipped, reasons, examples, cut."""
        out = {}
        for src in sorted(set(self.attempts) | {s for s, _ in self.skipped} | set(self.cuts)):
            out[src] = {
                "seen": self.n_seen(src),
                "skipped": self.n_skipped(src),
                "fraction": round(self.fraction(src), 6),
                "cut": self.cuts[src],  # trained on, its audio cut to Whisper's 30 s
                "reasons": {r: n for (s, r), n in sorted(self.skipped.items()) if s == src},
                "examples": [
                    {"row": e.row, "reason": e.reason, "detail": e.detail, "task": e.task}
                    for e in self.examples
                    if e.source == src
                ],
            }
            if self.dropped_turns[src]:
                out[src]["dropped_turns"] = self.dropped_turns[src]
        return out

    @classmethod
    def from_dict(cls, counts: dict, max_examples: int = 3) -> SkipCounter:
        """The inverse of `as_dict`."""
        counter = cls(max_examples)
        for src, c in counts.items():
            counter.attempts[src] += c["seen"]
            counter.dropped_turns[src] += c.get("dropped_turns", 0)
            counter.cuts[src] += c.get("cut", 0)  # checkpoints older than the cut count have none
            for reason, n in c["reasons"].items():
                counter.skipped[(src, reason)] += n
            for e in c["examples"]:
                counter._keep(Skip(src, e["row"], e["reason"], e["detail"], e["task"]))
        return counter

    def summary(self, source: str | None = None) -> str:
        """One line: counts per reason, then the kept examples."""
        counts = [f"{r} {n:,}" for (s, r), n in sorted(self.skipped.items()) if source in (None, s)]
        if not counts:
            return "nothing skipped"
        examples = [str(e) for e in self.examples if source in (None, e.source)]
        return "reasons: " + ", ".join(counts) + "; examples: " + " | ".join(examples)

    def __repr__(self) -> str:
        return f"SkipCounter(seen={self.n_seen()}, skipped={self.n_skipped()})"


def clearly_over(skipped: int, seen: int, limit: float, odds: float = 1e-3) -> bool:
    """Whether `skipped` of `seen` is more than a `limit` share by more than chance.

    A source whose rows are bad at exactly `limit` shows this many skips with probability under
    `odds` (Chernoff's bound on the binomial tail, ``exp(-n KL(k/n || limit))``). A plain
    "fraction over limit after N attempts" would stop healthy sources: with 1% allowed and 0.5% of
    rows bad, 2 of the first 100 are bad for one source in eleven. Here 11 bad of 18 stop a 1%
    limit at once, all bad at the second attempt, 2% bad after ~1,800 attempts.
    """
    if seen <= 0 or skipped <= limit * seen:
        return False
    if limit <= 0:
        return True
    p = skipped / seen
    kl = p * math.log(p / limit) + ((1 - p) * math.log((1 - p) / (1 - limit)) if p < 1 else 0.0)
    return seen * kl > -math.log(odds)


class SkipReport(L.Callback):
    """The training loader's skip counts, brought from its workers to the trainer.

    Every batch carries its worker's cumulative counts (`Batch.skips`, from worker `Batch.worker`);
    the newest snapshot of each worker, plus what earlier worker processes and the run before a
    resume counted, is this rank's total. At the end of training the ranks' totals are summed into
    `final`, logged one line per source, and saved in checkpoints so a resumed stage keeps counting.
    """

    def __init__(self) -> None:
        self.base = SkipCounter()  # counted by worker processes that are gone, and before a resume
        self.latest: dict[int, SkipCounter] = {}
        self.final: SkipCounter | None = None
        self._resumed: dict | None = None

    def total(self) -> SkipCounter:
        return self.base.copy().merge(*self.latest.values())

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._resumed is not None and trainer.is_global_zero:  # every rank loads rank 0's counts; one keeps them
            self.base = SkipCounter.from_dict(self._resumed)
        self._resumed = None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        snapshot = getattr(batch, "skips", None)
        if snapshot is None:
            return
        previous = self.latest.get(batch.worker)
        if previous is not None and snapshot.n_seen() < previous.n_seen():  # a new process under that id
            self.base.merge(previous)
        self.latest[batch.worker] = snapshot
        if module.logs_this_step():  # Lightning's log costs ~4 ms a call, written or not (1% of the demo)
            skipped = self.base.n_skipped() + sum(s.n_skipped() for s in self.latest.values())
            module.log("train/skipped", float(skipped), batch_size=1)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        total = SkipCounter().merge(*map(SkipCounter.from_dict, gather_objects(self.total().as_dict())))
        self.final = total
        if trainer.is_global_zero:
            for src in sorted(total.attempts):
                if total.dropped_turns[src]:
                    log.info("%s: left out %d earlier conversation turns to fit data.max_seq_length",
                             src, total.dropped_turns[src])
                if total.n_skipped(src):
                    log.warning(
                        "%s: skipped %d of %d samples (%.2f%%); %s",
                        src, total.n_skipped(src), total.n_seen(src), 100 * total.fraction(src), total.summary(src),
                    )
                if total.cuts[src]:
                    log.warning(
                        "%s: cut the audio of %d of %d samples to Whisper's 30 s (data.too_long=drop skips them)",
                        src, total.cuts[src], total.n_seen(src),
                    )

    def state_dict(self) -> dict:
        return {"skips": self.total().as_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resumed = state_dict.get("skips")
