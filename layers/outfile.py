"""Files bnncost writes (model and device YAMLs, checkpoints, plots): checked before any work is done, then
written whole or not at all, so a bad path fails in one line naming the option, and a crash or Ctrl-C mid-write
leaves no partial file under the real name."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


class OutputPathError(ValueError):
    """A path bnncost cannot write; the message names the option and the path."""


def check_output(path: str | os.PathLike, option: str) -> Path:
    """The target as a Path, once it is known that a file can be created beside it (permission bits do not tell:
    root passes every access() check, and /proc or a read-only mount refuse the file anyway)."""
    if not str(path).strip():
        raise OutputPathError(f"{option}: empty; give a file name")
    target = Path(path).expanduser()
    if target.is_symlink():  # write where the link points, as a shell's `>` would; the rename keeps the link
        target = Path(os.path.realpath(target))
    folder = target.parent
    if target.is_dir():
        raise OutputPathError(f"{option} {path}: is a directory; give a file name")
    if target.exists() and not target.is_file():
        raise OutputPathError(f"{option} {path}: is not a regular file (a device, pipe or socket); give a file name")
    if not folder.is_dir():
        raise OutputPathError(f"{option} {path}: folder {folder} does not exist")
    if target.exists() and not os.access(target, os.W_OK):
        raise OutputPathError(f"{option} {path}: not writable")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputPathError(f"{option} {path}: cannot write in {folder} ({exc.strerror or exc})") from None
    return target


def _fsync_folder(folder: Path) -> None:
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # a platform without directory handles: the rename is as durable as it gets there
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _mode_for(target: Path) -> int:
    """The mode an ordinary write would give: the existing file's, else 0666 less the umask."""
    try:
        return target.stat().st_mode & 0o777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


@contextmanager
def atomic_output(path: str | os.PathLike, option: str, *, binary: bool = False,
                  durable: bool = False) -> Iterator[IO]:
    """Yield a file to write; on success it replaces `path` in one rename (with `durable`, the folder is fsynced
    too, so the rename survives a power loss); on any failure the temporary file is removed."""
    target = check_output(path, option)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp, _mode_for(target))  # mkstemp's 0600 would hide a plot or a model from its owner's group
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputPathError(f"{option} {path}: could not be written ({exc.strerror or exc})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_folder(target.parent)
