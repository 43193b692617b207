"""Benchmark files as their authors publish them, for ``omni-eval``'s benchmark commands.

- Hugging Face's parquet layout, as a dataset repository downloads: a split's shards named
  ``<split>-00000-of-00001.parquet`` (at the top, under ``data/`` or under a config's folder) or
  ``<split>/0000.parquet`` (the converted-parquet branch). Audio is HF's ``{bytes, path}`` struct.
- JSON Lines manifests, one row a line, audio as a path relative to the file.
- A hub name (``fixie-ai/llama-questions``), loaded by `datasets` (from its local cache if there).

Rows come back as plain dicts with their location (``file.parquet:12``), read by
`omni_train.data.sources.read_rows`; a row that cannot be read is an error naming it, never a skip
(a skipped question would change the score).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from omni_train.audio import Audio
from omni_train.data.sources import BadRow, first_object, read_rows, to_audio

_SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}\.parquet$")


def find_splits(folder: str | Path) -> dict[str, list[Path]]:
    """``{split: [parquet shards]}`` of a dataset folder in Hugging Face's layout (see the module doc)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    splits: dict[str, list[Path]] = {}
    for f in sorted(folder.rglob("*.parquet")):
        depth = len(f.relative_to(folder).parts)
        if m := _SHARD.match(f.name):
            if depth == 1 or (depth == 2 and f.parent.name == "data"):
                splits.setdefault(m["split"], []).append(f)
        elif depth <= 3 and re.fullmatch(r"\d{4}\.parquet", f.name):  # SPLIT/0000.parquet, CONFIG/SPLIT/0000.parquet
            splits.setdefault(f.parent.name, []).append(f)
    return splits


def pick_split(splits: dict[str, list[Path]], split: str | None, where: str) -> tuple[str, list[Path]]:
    """The shards of `split`; with no split named, the only one there is."""
    if not splits:
        raise FileNotFoundError(f"{where}: no parquet shards in Hugging Face's layout (<split>-00000-of-00001.parquet)")
    if split is None:
        if len(splits) > 1:
            raise ValueError(f"{where} holds splits {', '.join(sorted(splits))}: pass --split NAME")
        split = next(iter(splits))
    if split not in splits:
        raise ValueError(f"{where}: no split {split!r} (splits: {', '.join(sorted(splits))})")
    return split, splits[split]


def columns_of(files: list[Path]) -> list[str]:
    """The column names of a parquet file, or the keys of a JSONL file's first row."""
    f = files[0]
    if f.suffix == ".parquet":
        return pq.read_schema(f).names
    return list(first_object(f) or {})


def num_rows(files: list[Path]) -> int | None:
    """Rows in parquet files (from their footers); None for JSONL, which would have to be read."""
    if any(f.suffix != ".parquet" for f in files):
        return None
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def local_rows(files: list[Path], columns: list[str], batch_size: int = 32) -> Iterator[tuple[str, Path, dict]]:
    """``(location, folder, row)`` of every row; a row that cannot be read raises ValueError naming it."""
    for where, folder, values in read_rows(files, columns, batch_size):
        if isinstance(values, BadRow):  # bad data, not a wrong type
            raise ValueError(f"{where}: {values.reason}" + (f" ({values.detail})" if values.detail else ""))  # noqa: TRY004
        yield where, folder, values


def hub_rows(name: str, config: str | None, split: str, audio_columns: list[str]) -> Iterator[tuple[str, None, dict]]:
    """Rows of a hub dataset through `datasets` (its cache first); audio stays encoded."""
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # datasets raises many kinds; each is one line for the user
        raise ValueError(f"cannot load {name}{f' ({config})' if config else ''} split {split!r}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e  # fmt: skip
    for col in audio_columns:
        if col in ds.column_names:
            ds = ds.cast_column(col, datasets.Audio(decode=False))
    for i, row in enumerate(ds):
        yield f"{name}:{split}:{i}", None, row


def audio_of(value, folder: Path | None, where: str, column: str) -> Audio:
    """A row's audio (HF struct, bytes or a path relative to `folder`) as an `Audio`; ValueError if missing."""
    try:
        return to_audio(value, folder, column)
    except BadRow as e:
        raise ValueError(f"{where}: {e.reason}" + (f" ({e.detail})" if e.detail else "")) from None
