"""Files that are either complete or not there: every checkpoint, model folder, data shard, summary,
config record and result file omni-train writes goes through here (audio and pictures made for a
person to look at do not).

A training run is killed at any moment (SIGKILL, a lost node, a full disk), and what it leaves must
still be usable: a checkpoint, a model folder or a summary is written beside its final name, made
durable (fsync), and only then renamed into place, so the name always points at a whole file. A
failed write leaves the previous file with that name untouched.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_path(path: Path) -> None:
    """Make a file's bytes, or the renames in a folder, durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary name beside `path`, then rename it into place.

    Temporaries a killed process left beside `path` are removed first. On any failure the
    temporary goes and `path` keeps its old content; an OSError says so in a note, and a full disk
    (or quota) becomes `DiskFull`, whose one line names the file and the space left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        full = _disk_full(err, path.parent)  # measured while the temporary still takes its space
        tmp.unlink(missing_ok=True)
        if full:
            raise DiskFull(path) from err
        if isinstance(err, OSError):
            err.add_note(f"writing {path} failed; the previous {path.name}, if any, is intact")
        raise
    fsync_path(path.parent)
    return path


# Less free space than this after a failed write is a full disk, whatever the writer said: torch.save
# on a full disk raises "RuntimeError: [enforce fail at inline_container.cc] . unexpected pos ..."
FULL_BELOW = 16 * 2**20


def _disk_full(err: BaseException, folder: Path) -> bool:
    """Whether a failed write failed for want of space: ENOSPC/EDQUOT in its causes, or a disk left (near) full."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        cause = cause.__cause__ or cause.__context__
    if not isinstance(err, Exception):  # KeyboardInterrupt, SystemExit: not the disk
        return False
    try:
        return shutil.disk_usage(folder).free < FULL_BELOW
    except OSError:
        return False


class DiskFull(OSError):
    """No space left (or over quota) while writing `path`; what was there before is intact."""

    def __init__(self, path: Path) -> None:
        free = shutil.disk_usage(path.parent).free
        super().__init__(errno.ENOSPC, f"No space left on device writing {path} ({free / 2**20:.0f} MiB free on "
                                       f"its disk); the previous {path.name}, if any, is intact")  # fmt: skip
        self.path = path

    def __str__(self) -> str:
        return self.strerror


def write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write` of UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """`atomic_write` of indented JSON, non-ASCII text as it is (UTF-8)."""
    return write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def atomic_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces `out_dir` only once everything in it is written.

    The finished folder goes in by `swap_in`: a crash leaves the old folder or the new one whole,
    never a partial one. The folder gets the user's umask, as `mkdir` would (``mkdtemp`` makes it
    private).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    parent = out_dir.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    try:
        yield tmp
        for f in tmp.rglob("*"):
            fsync_path(f)
        fsync_path(tmp)
        swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_in(new: Path, target: Path) -> None:
    """Replace `target` (a file or a folder, or nothing) by `new`, which is complete.

    POSIX cannot rename a folder over a non-empty one, so the old one is first moved aside to
    ``.NAME.old``, the new one renamed in, then the old one deleted: a crash between the two renames
    leaves ``.NAME.old`` whole (`resume.latest_checkpoint` resumes from ``.last.ckpt.old``); a
    rename that fails puts the old one back.
    """
    old = target.with_name(f".{target.name}.old")
    if target.exists():  # complete, so an .old beside it is stale (else .old is the one to keep for now)
        remove(old)
        os.replace(target, old)
        try:
            os.replace(new, target)
        except BaseException:
            os.replace(old, target)
            raise
    else:
        os.replace(new, target)
    fsync_path(target.parent)
    remove(old)


def remove(path: Path) -> None:
    """Delete a file or a folder tree, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
