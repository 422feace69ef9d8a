"""Atomic file writes: a temporary file (or folder) beside the destination, then a rename, so a reader (or an
interrupted run) never sees half a file. The one implementation behind images, configs, JSON and codec folders."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def _read_umask() -> int:  # os.umask can only be read by setting it; once, at import
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# tempfile makes its files 0600 and its folders 0700 (private to the owner); what is published gets the modes a
# plain open() or mkdir() would give, so on a shared machine the team can read the runs, images and data.
UMASK = _read_umask()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~UMASK)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def write_dir_atomic(path: str | os.PathLike, write: Callable[[Path], None], replace: bool = True) -> bool:
    """`write(folder)` fills a fresh folder beside `path`, which then becomes `path` in one rename: a reader sees
    the old folder or the new one, never a mix, and a failed `write` leaves `path` as it was. Processes that
    write the same folder at once (the ranks of a multi-process run) each publish a whole one.

    Everything in the folder gets the modes of a plain open() or mkdir(). An existing `path` is replaced
    (`replace`), or kept and the new folder dropped (the first process to publish wins). Returns whether this
    call's folder is the one at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    trash = None
    try:
        write(tmp)
        for inner in [tmp, *tmp.rglob("*")]:  # plain modes for what was written private (safetensors files are 0600)
            if not inner.is_symlink():
                os.chmod(inner, (0o777 if inner.is_dir() else 0o666) & ~UMASK)
        for attempt in range(100):
            try:
                os.rename(tmp, path)  # replaces nothing but an empty folder
                return True
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            if not replace:
                return False
            # The old folder moves into a trash folder first (a folder cannot be renamed over a full one), so
            # `path` is missing for the moment between the two renames, never half written.
            trash = trash or Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            try:
                os.rename(path, trash / str(attempt))
            except FileNotFoundError:
                pass  # another process moved it away first: publish again
        raise RuntimeError(f"could not write {path}: other processes kept replacing it")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # still there if it was not published
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
