"""Hugging Face datasets with an audio and a text column: ``save_to_disk`` folders or data files."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

from omni_train.data.skips import SkipCounter, UnreadableData
from omni_train.data.sources.base import MissingColumnError, Row, Source, check_tasks
from omni_train.data.sources.files import TABLE_EXTS, PathLike, existing, is_glob, resolve_files, stem
from omni_train.data.sources.tables import asr_sample
from omni_train.tasks import Task


def hf_asr(
    path: PathLike,
    audio_column: str = "audio",
    text_column: str = "text",
    split: str = "train",
    *,
    tasks: Sequence[str] = ("A1T1",),
    id_column: str | None = None,
    name: str | None = None,
    skips: SkipCounter | None = None,
    max_skip_fraction: float | None = None,
    batch_size: int = 64,
    cache_dir: PathLike | None = None,
) -> Source:
    """Any HF dataset on disk with an audio and a text column -> A1T1 samples.

    `path` is either a ``save_to_disk`` folder (a Dataset, or a DatasetDict from which `split` is
    taken) or data files (a file, a folder or a glob of ``.parquet`` or ``.jsonl``/``.json``),
    streamed with ``load_dataset(..., streaming=True)``. The audio column is cast to
    ``datasets.Audio(decode=False)``: we pass the encoded bytes (or the path) on as `Audio` and decode
    ourselves, because ``datasets``' own decoding needs torchcodec/FFmpeg. Relative audio paths are
    taken relative to the dataset folder (or the data file's folder).

    Args:
        id_column: a column to use as `Sample.row`; default the row's index in the split.
            (A saved dataset is sharded by row index, reading only the shard's rows; streamed files
            are read whole by every shard, which keeps every `count`-th row.)
        cache_dir: where ``load_dataset`` may keep its lock files (default: the HF cache).
    """
    check_tasks(tasks, (Task.A1T1,))  # a uniform `tasks` argument for configs; ASR rows give A1T1 only
    p = existing(path) if not is_glob(path) else Path(str(path))
    on_disk = p.is_dir() and any((p / f).is_file() for f in ("state.json", "dataset_dict.json", "dataset_info.json"))
    needed = [audio_column, text_column] + ([id_column] if id_column else [])
    if on_disk:
        spec = ("disk", p, split)
        base_dir = p
    else:
        files = resolve_files(path, TABLE_EXTS)
        kinds = {"parquet" if f.suffix == ".parquet" else "json" for f in files}
        if len(kinds) > 1:
            raise ValueError(f"{path}: mixes parquet and JSON files; give one kind")
        spec = (kinds.pop(), [str(f) for f in files], split)
        base_dir = files[0].parent
    columns = _hf_open(spec, None, cache_dir).column_names or []
    for col in needed:
        if col not in columns:
            raise MissingColumnError(f"{p}: no column {col!r} (columns: {', '.join(columns)})")
    read = partial(
        _hf_asr_samples, spec=spec, audio_column=audio_column, text_column=text_column,
        id_column=id_column, base_dir=base_dir, batch_size=batch_size, cache_dir=cache_dir,
    )
    return Source(name or stem(path), read, skips, max_skip_fraction)


def _hf_open(spec, columns: list[str] | None, cache_dir):
    """A `datasets.Dataset` (on disk, memory-mapped) or a streaming `IterableDataset`, nothing decoded."""
    import datasets

    kind, where, split = spec
    if kind == "disk":
        ds = datasets.load_from_disk(str(where))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise KeyError(f"{where}: no split {split!r} (splits: {', '.join(ds)})")
            ds = ds[split]
    else:
        extra = {"columns": columns} if kind == "parquet" and columns else {}  # parquet reads only these
        cache = {"cache_dir": str(cache_dir)} if cache_dir else {}
        ds = datasets.load_dataset(kind, data_files=where, split="train", streaming=True, **cache, **extra)
    return ds.select_columns(columns) if columns else ds


def _hf_asr_samples(src, spec, audio_column, text_column, id_column, base_dir, batch_size, cache_dir):
    import datasets

    columns = [audio_column, text_column] + ([id_column] if id_column else [])
    ds = _hf_open(spec, columns, cache_dir).cast_column(audio_column, datasets.Audio(decode=False))
    index, count = src.shard
    if isinstance(ds, datasets.Dataset):  # random access: read only this shard's rows
        row_ids = range(index, len(ds), count)
        ds = ds.select(row_ids) if count > 1 else ds
        rows = zip(row_ids, _iter_hf_rows(ds, columns, batch_size))
    else:
        rows = ((i, v) for i, v in enumerate(_iter_hf_rows(ds, columns, batch_size)) if src.owns(i))
    try:
        for i, values in rows:
            r = Row(values, base_dir)
            row = values.get(id_column) if id_column and values.get(id_column) is not None else i
            sample = src.make(row, Task.A1T1, partial(asr_sample, r, audio_column, text_column, src.name, row))
            if sample is not None:
                yield sample
    except UnicodeDecodeError as err:  # the datasets JSON reader cannot skip a line: name the data, not a traceback
        where = spec[1][0] if len(spec[1]) == 1 else f"{len(spec[1])} files from {spec[1][0]}"
        raise UnreadableData(
            f"{src.name}: {where}: not UTF-8 (byte 0x{err.object[err.start]:02x}: {err.reason}); "
            "the datasets library reads no further: fix the file, or read JSONL with asr_manifest, "
            "which skips such lines and counts them"
        ) from None


def _iter_hf_rows(ds, columns: list[str], batch_size: int) -> Iterator[dict]:
    for batch in ds.iter(batch_size=batch_size):
        yield from (dict(zip(columns, vals)) for vals in zip(*(batch[c] for c in columns)))
