"""`Source`, the contract every reader fulfils, and the row helpers readers share.

A source is a named, lazy, re-iterable stream of `Sample`s (see the package docstring for the
whole contract). A reader builds each sample inside `Source.make`, which counts the attempt and
turns a `BadRow` into a counted skip; `Row` turns a row's raw values into checked ones, raising
`BadRow` with a short stable reason for every problem.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from omni_train.audio import Audio
from omni_train.data.samples import Sample
from omni_train.data.skips import SkipCounter
from omni_train.data.snac_format import SnacFormatError, frames_from_flat, parse_answer_snac
from omni_train.tasks import Task


class MissingColumnError(ValueError):
    """A configured column/key is not in a data file: a config mistake, not a bad row."""


class BadRow(Exception):
    """Raised while building one sample; `Source.make` turns it into a counted skip.

    Args:
        reason: short and stable ("missing audio file", "bad answer_snac"): counts are kept by it.
        detail: the specific problem (a path, a parser's message).
        rows: how many rows it stands for: more than one where a whole shard or row group is lost.
    """

    def __init__(self, reason: str, detail: str = "", rows: int = 1) -> None:
        super().__init__(reason)
        self.reason, self.detail, self.rows = reason, detail, rows


class Source:
    """A named, lazy, re-iterable stream of `Sample`s; each ``iter()`` reads the data again.

    Args:
        name: used as `Sample.source` and as the key of the skip counts.
        read: ``read(source) -> Iterator[Sample]``; a `functools.partial` of a module-level
            function, so the source pickles into DataLoader workers. It reads only the units this
            shard `owns` and builds each sample through `make`.
        skips: where skips are counted (shared between sources if you pass one); a fresh one by default.
        max_skip_fraction: raise `TooManySkips` once more than this share of the attempted samples
            was skipped: mid-pass as soon as the share is over it by more than chance (judged at
            each skip, `SkipCounter.check`'s ``early``), and exactly at the end of each pass.
            None: only count.
        shard: ``(index, count)``: this source reads every `count`-th unit from `index`.

    Whatever `max_skip_fraction` says, `max_streak` attempts in a row that give no sample stop the
    run with `TooManySkips` naming the reasons. The training stream sets it (its mixture restarts a
    source for ever, so one that makes nothing would stall the run with no step and no output);
    a one-pass reader (validation, omni-prep) ends anyway and leaves it None. An attempt gives a
    sample when its consumer keeps it: one the `SampleEncoder` skips later (unreadable audio, too
    long) adds to the streak too.
    """

    max_streak: int | None = None

    def __init__(
        self,
        name: str,
        read: Callable[[Source], Iterator[Sample]],
        skips: SkipCounter | None = None,
        max_skip_fraction: float | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"shard index must be in [0, {count}), got {index}")
        self.name = name
        self.skips = skips if skips is not None else SkipCounter()
        self.max_skip_fraction = max_skip_fraction
        self.shard = (index, count)
        self._read = read
        self.cache: dict = {}  # per-process state a reader may keep between passes (e.g. a code map)

    def __iter__(self) -> Iterator[Sample]:
        for sample in self._read(self):
            streak = self.skips.streak[self.name]
            yield sample
            if self.skips.streak[self.name] == streak:  # the consumer kept it (its own skips count here too)
                self.skips.streak[self.name] = 0
        if self.max_skip_fraction is not None:
            self.skips.check(self.max_skip_fraction, self.name)

    def sharded(self, index: int, count: int) -> Source:
        """The same source restricted to every `count`-th unit (row group, line, utterance) from `index`.

        For DataLoader workers and data-parallel ranks: each shard reads only its own units' data.
        Parquet is split by row group, so a set needs at least `count` row groups to be balanced.
        Sharding a shard splits it further. Shards share the counter and the cache.
        """
        if not 0 <= index < count:
            raise ValueError(f"shard index must be in [0, {count}), got {index}")
        mine, total = self.shard
        shard = Source(self.name, self._read, self.skips, self.max_skip_fraction, (mine + total * index, total * count))
        shard.cache, shard.max_streak = self.cache, self.max_streak
        return shard

    def owns(self, unit: int) -> bool:
        """Whether the `unit`-th shardable unit (0-based, in reading order) belongs to this shard."""
        return unit % self.shard[1] == self.shard[0]

    def make(self, row: str | int, task: Task, build: Callable[[], Sample]) -> Sample | None:
        """Count one attempt and run `build`; a `BadRow` becomes a counted skip (of as many rows as
        it stands for) and gives None. Raises `TooManySkips`, before the attempt, when the skips so
        far are too many."""
        if self.skips.streak[self.name]:  # a skip since the last kept sample: the only time the share rises
            if self.max_streak is not None:
                self.skips.check_streak(self.max_streak, self.name)
            if self.max_skip_fraction is not None:
                self.skips.check(self.max_skip_fraction, self.name, early=True)
        self.skips.seen(self.name)
        try:
            return build()
        except BadRow as bad:
            self.skips.seen(self.name, bad.rows - 1)
            self.skips.skip(self.name, row, bad.reason, bad.detail, task.value, n=bad.rows)
            return None

    def __repr__(self) -> str:
        shard = "" if self.shard == (0, 1) else f", shard={self.shard}"
        return f"Source({self.name!r}{shard}, {self.skips!r})"


def check_tasks(tasks: Sequence[str] | str, allowed: Sequence[Task]) -> tuple[Task, ...]:
    """Config task names (a list, a Hydra ListConfig, or one string) -> unique `Task`s, checked against `allowed`."""
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    out: list[Task] = []
    for t in names:
        try:
            task = Task(str(t))
        except ValueError:
            raise ValueError(f"unknown task {t!r}; tasks are {', '.join(x.value for x in Task)}") from None
        if task not in allowed:
            choices = ", ".join(a.value for a in allowed)
            raise ValueError(f"task {task.value} is not available here; choose from {choices}")
        if task not in out:
            out.append(task)
    if not out:
        raise ValueError("no tasks given")
    return tuple(out)


class Row:
    """One row's values, checked on demand; every problem becomes a `BadRow` with a stable reason.

    Args:
        values: column -> raw value.
        base_dir: relative audio paths are taken relative to it (the data file's folder).
        error: a row that could not be read at all (bad JSON, an unreadable parquet page): every
            access raises it, so each task's attempt is counted as that skip.
    """

    def __init__(self, values: Mapping, base_dir: Path | None = None, error: BadRow | None = None) -> None:
        self.values, self.base_dir, self.error = values, base_dir, error
        self._frames: dict[str, torch.Tensor | BadRow] = {}

    def _get(self, col: str):
        if self.error is not None:
            raise self.error
        value = self.values.get(col)
        if value is None:
            raise BadRow(f"missing {col}")
        return value

    def text(self, col: str) -> str:
        value = self._get(col)
        if not isinstance(value, str):
            raise BadRow(f"bad {col}", f"expected text, got {type(value).__name__}")
        if not value.strip():
            raise BadRow(f"empty {col}")
        return value.strip()

    def optional_text(self, col: str) -> str | None:
        value = self.values.get(col) if self.error is None else None
        return value.strip() or None if isinstance(value, str) else None

    def audio(self, col: str) -> Audio:
        return to_audio(self._get(col), self.base_dir, col)

    def frames(self, col: str) -> torch.Tensor:
        """Parsed once per row, however many tasks need them (errors too)."""
        if col not in self._frames:
            try:
                self._frames[col] = to_frames(self._get(col))
            except SnacFormatError as err:
                self._frames[col] = BadRow(f"bad {col}", str(err))
            except BadRow as bad:
                self._frames[col] = bad
        result = self._frames[col]
        if isinstance(result, BadRow):
            raise result
        return result


def to_frames(value) -> torch.Tensor:
    """An ``answer_snac`` string, or a flat code list (SNAC ints, ``#`` markers allowed) -> ``(N, 7)``.

    Raises:
        SnacFormatError: a malformed value (its message says what is wrong).
    """
    if isinstance(value, str):
        return parse_answer_snac(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        if any(isinstance(v, str) for v in value):  # Mini-Omni's reconscruct_snac list form
            return parse_answer_snac(" ".join(map(str, value)))
        return frames_from_flat(value)
    raise SnacFormatError(f"expected an answer_snac string or a list of codes, got {type(value).__name__}")


def to_audio(value, base_dir: Path | None, col: str) -> Audio:
    """A path, raw bytes or an HF Audio struct ``{bytes, path}`` -> `Audio` (bytes win over the path)."""
    if isinstance(value, Mapping):
        data, path = value.get("bytes"), value.get("path")
        if data:
            return Audio(data=bytes(data))
        if not path:
            raise BadRow(f"missing {col}", "neither bytes nor path")
        value = path
    if isinstance(value, (bytes, bytearray, memoryview)):
        if not value:
            raise BadRow(f"empty {col}")
        return Audio(data=bytes(value))
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not str(value):
            raise BadRow(f"missing {col}")
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise BadRow("missing audio file", str(path))
        return Audio(path=str(path))
    raise BadRow(f"bad {col}", f"expected a path, bytes or {{bytes, path}}, got {type(value).__name__}")
