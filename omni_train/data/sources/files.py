"""The files of table sources: paths, folders and globs in; rows of parquet and JSONL out.

`read_rows` is the one reader of tables: parquet through ``ParquetFile.iter_batches`` (only the
columns a source needs, one record batch at a time, so 160 GB never sit in memory), JSONL line by
line. It shards by row group or line, locates every row (``file.parquet:123``, ``file.jsonl:7``)
and hands back unreadable rows as `BadRow` values for the caller to count. Text is read as bytes
and decoded a line at a time (`text_line`), so one bad byte costs its line, not the file.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from omni_train.data.sources.base import BadRow, MissingColumnError, Source

PathLike = str | os.PathLike
TABLE_EXTS = (".parquet", ".jsonl", ".json")


def is_glob(path: PathLike) -> bool:
    return any(c in str(path) for c in "*?[")


def existing(path: PathLike, what: str = "") -> Path:
    """`path` as a Path, or a `FileNotFoundError` whose one line names it (and `what` it is, if given)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what + ' ' if what else ''}{path}: no such file or directory")
    return p


def resolve_files(path: PathLike, exts: tuple[str, ...]) -> list[Path]:
    """A file, a folder (searched recursively, hidden folders skipped) or a glob -> its data files, sorted."""
    if is_glob(path):
        files = sorted(Path(f) for f in glob.glob(os.path.expanduser(str(path)), recursive=True) if os.path.isfile(f))
        if not files:
            raise FileNotFoundError(f"{path}: no files match")
        return files
    p = existing(path)
    if p.is_file():
        return [p]
    files = sorted(
        f for f in p.rglob("*")
        if f.suffix in exts and f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
    )
    if not files:
        raise FileNotFoundError(f"{path}: no {' or '.join(exts)} files in this folder")
    return files


def stem(path: PathLike) -> str:
    name = Path(str(path)).name
    return name.split(".")[0] if not is_glob(path) else Path(str(path)).parent.name


def _is_parquet(f: Path) -> bool:
    return f.suffix == ".parquet"


def text_line(raw: bytes) -> str:
    """A line of a text file as UTF-8; raises `BadRow` ("not UTF-8") naming the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRow("not UTF-8", f"byte 0x{raw[err.start]:02x} at column {err.start + 1}") from None


def first_object(f: Path) -> dict | None:
    """The first JSON object line of a JSONL file (None if it has none)."""
    with open(f, "rb") as fh:  # bytes: a text reader decodes a whole chunk, so a bad byte further on would fail here
        for lineno, raw in enumerate(fh, start=1):
            if raw.strip():
                try:
                    obj = json.loads(text_line(raw))
                except BadRow as bad:
                    raise ValueError(f"{f}:{lineno}: not UTF-8 ({bad.detail})") from None
                except json.JSONDecodeError as err:
                    raise ValueError(f"{f}: not JSON Lines ({err})") from None
                return obj if isinstance(obj, dict) else None
    return None


def check_columns(f: Path, columns: Iterable[str]) -> None:
    """Raise `MissingColumnError` naming the file and column; JSONL is judged by its first line."""
    if _is_parquet(f):
        names = pq.read_schema(f).names
    else:
        first = first_object(f)
        if first is None:
            return  # an empty manifest is no config mistake; it just yields nothing
        names = list(first)
    for col in columns:
        if col not in names:
            raise MissingColumnError(f"{f}: no column {col!r} (columns: {', '.join(names)})")


def first_readable(files: list[Path]) -> Path:
    """The first file whose columns can be read: a truncated shard is skipped (and counted) when the
    data is read, so it should not stop the run when the source is built."""
    for f in files:
        if not _is_parquet(f) or _num_row_groups(f) >= 0:
            return f
    if len(files) == 1:  # a source given as one file: name it
        raise ValueError(f"{files[0]}: cannot be read (a truncated or damaged parquet file, or not parquet)")
    raise ValueError(
        f"{files[0].parent}: none of its {len(files)} parquet files can be read (truncated or not parquet)"
    )


def _num_row_groups(f: Path) -> int:
    """-1 for a file whose parquet footer cannot be read."""
    try:
        return pq.read_metadata(f).num_row_groups
    except (pa.ArrowException, OSError):
        return -1


def read_rows(
    files: list[Path], columns: list[str], batch_size: int, src: Source | None = None
) -> Iterator[tuple[str, Path, dict | BadRow]]:
    """Yield ``(location, folder, values)`` for each row of this shard; only `columns` are read from parquet.

    Shard units are parquet row groups and JSONL lines, counted across all files in order. Parquet
    with fewer row groups than there are shards (a small set on many workers) is sharded by row
    instead, every shard reading all groups, so no shard is left empty.

    What cannot be read comes back as a `BadRow` for the caller to count, never as an error: a
    JSONL line that is not UTF-8 or not a JSON object (its keys are the row's business: a missing
    one is the row's counted skip); a parquet file that cannot be opened (truncated: its footer is
    gone, so its row count is unknown: one `BadRow` at the file's name, "whole shard"); a parquet
    file without a needed column (the factory checked the first file; this is a later one); a row
    group that fails midway (one at the row where it failed). The last two stand for the rows they
    lose (`BadRow.rows`, this shard's share of them), so the skip fraction weighs them right.
    """
    parquet = [f for f in files if _is_parquet(f)]
    count = src.shard[1] if src is not None else 1
    by_row = count > 1 and bool(parquet) and sum(max(0, _num_row_groups(f)) for f in parquet) < count
    unit = -1
    for f in files:
        if _is_parquet(f):
            try:
                pf = pq.ParquetFile(f)
            except (pa.ArrowException, OSError) as err:
                # every shard sees it; the one owning the next unit reports it, so it is counted once
                if src is None or src.owns(unit + 1):
                    yield f.name, f.parent, BadRow("unreadable parquet file", f"whole shard, rows unknown: {err}")
                continue
            with pf:
                meta = pf.metadata
                starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
                groups = []
                for g in range(meta.num_row_groups):
                    unit += not by_row
                    if by_row or src is None or src.owns(unit):
                        groups.append(g)
                missing = [c for c in columns if c not in pf.schema_arrow.names]
                if missing:  # schema drift in a later shard: its rows are lost, not the run
                    if by_row:
                        owned = sum(_owned(src, unit + 1, int(starts[-1])))
                    else:
                        owned = sum(int(starts[g + 1] - starts[g]) for g in groups)
                    unit += by_row * int(starts[-1])
                    if owned:
                        names = ", ".join(pf.schema_arrow.names)
                        detail = f"whole shard, {owned:,} rows: no column {missing[0]!r} (columns: {names})"
                        yield f.name, f.parent, BadRow(f"missing column {missing[0]}", detail, rows=owned)
                    continue
                for g in groups:  # one row group at a time, so row numbers stay exact
                    row = int(starts[g])
                    try:
                        for batch in pf.iter_batches(batch_size=batch_size, row_groups=[g], columns=columns):
                            for values in batch.to_pylist():
                                unit += by_row
                                if not by_row or src.owns(unit):
                                    yield f"{f.name}:{row}", f.parent, values
                                row += 1
                    except (pa.ArrowException, OSError) as err:  # a corrupt page: the rest of this group is lost
                        lost = int(starts[g + 1]) - row
                        owned = sum(_owned(src, unit + 1, lost)) if by_row else lost
                        if owned:
                            detail = f"the rest of row group {g}, {owned:,} rows: {err}"
                            yield f"{f.name}:{row}", f.parent, BadRow("unreadable parquet data", detail, rows=owned)
                        unit += by_row * lost  # keep the row units of all shards aligned
        else:
            with open(f, "rb") as fh:  # bytes, decoded a line at a time: a bad byte costs its line
                for lineno, raw in enumerate(fh, start=1):
                    if not raw.strip():
                        continue
                    unit += 1
                    if src is not None and not src.owns(unit):
                        continue
                    try:
                        values = json.loads(text_line(raw))
                        if not isinstance(values, dict):
                            values = BadRow("bad json", f"expected an object, got {type(values).__name__}")
                    except BadRow as bad:
                        values = bad
                    except json.JSONDecodeError as err:
                        values = BadRow("bad json", str(err))
                    yield f"{f.name}:{lineno}", f.parent, values


def _owned(src: Source | None, first: int, n: int) -> Iterator[bool]:
    """Which of the units ``first .. first + n - 1`` this shard owns (all of them without a source)."""
    return (src is None or src.owns(u) for u in range(first, first + n))
