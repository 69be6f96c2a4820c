"""One verified file write: stream, hash, size check, temporary file, fsync, rename. And safe names.

Nothing here talks HTTP: :func:`save_stream` takes any iterable of byte chunks, so a test can feed it
whatever it likes, and :mod:`imgsync.sync` joins it to the portal client.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import DownloadFailed, LocalStorageError, TransientError
from .models import ImageRef

MAX_NAME_BYTES = 150
TEMP_SUFFIX = ".part"
# C0 and C1 control characters (both are Unicode "Cc"; C1's CSI, \x9b, starts terminal escapes), and the
# characters Windows reserves.
_RESERVED = re.compile(r'[\x00-\x1f\x7f-\x9f<>:"/\\|?*]')
_WINDOWS_DEVICES = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(10)),
    *(f"LPT{i}" for i in range(10)),
}
# Errors that mean no later write to dest can succeed either: the run stops instead of failing every image.
_FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def safe_name(name: str) -> str:
    """The portal's file name made safe for any file system: see the contract's "What lands where".

    Path separators, ``..``, control and reserved characters are removed, Windows device names
    defused, the result cut to 150 bytes of UTF-8 (keeping the extension when it can) and ``image``
    when nothing is left.
    """
    text = unicodedata.normalize("NFC", name)
    text = _RESERVED.sub("", text)
    while ".." in text:
        text = text.replace("..", ".")
    text = text.strip(" .")
    _, dot, ext = text.rpartition(".")
    if not dot:
        ext = ""
    # Windows takes the part before the *first* dot, trailing spaces dropped, as the device name:
    # "nul.tar.gz" and "con .jpg" are the devices NUL and CON, not files (the last dot missed both).
    if text.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        text = "_" + text
    text = _cut_utf8(text, MAX_NAME_BYTES, ext)
    return text or "image"


def _cut_utf8(text: str, limit: int, ext: str) -> str:
    if len(text.encode()) <= limit:
        return text
    suffix = f".{ext}" if ext and len(ext.encode()) <= 16 else ""
    room = limit - len(suffix.encode())
    stem = text[: -len(suffix)] if suffix else text
    cut = stem.encode()[:room].decode("utf-8", errors="ignore").rstrip(" .")
    return cut + suffix


def relative_path(ref: ImageRef, name: str) -> str:
    """Where an image lands under dest: ``<product_id>/<image_id>-<safe name>``."""
    return f"{ref.product_id}/{ref.image_id}-{safe_name(name)}"


def resolve_inside(dest: Path, relative: str) -> Path:
    """``dest / relative``, refusing anything that would land outside ``dest`` (defence in depth)."""
    root = dest.resolve()
    target = (root / relative).resolve()
    if target == root or root not in target.parents:
        raise DownloadFailed(f"refusing to write outside the destination folder: {relative!r}")
    return target


class NotPlain(ValueError):
    """A relative path that :func:`size_inside` leaves to :func:`resolve_inside` (a symlink, ``..``, ...)."""


def size_inside(root: str, relative: str) -> int | None:
    """The size ``resolve_inside(root, relative).stat()`` reports (None: no such file), for a plain relative path
    under the resolved folder ``root``, at the cost of one ``lstat`` per component (the skip rule asks it for
    every image of a warm run). Raises :class:`NotPlain` for anything else (an absolute path, empty, ``.`` or
    ``..`` parts, a symlink on the way): the caller asks :func:`resolve_inside`."""
    parts = relative.split("/")
    if "" in parts or "." in parts or ".." in parts or "\0" in relative:
        raise NotPlain(relative)
    path = root.rstrip("/")
    found = None
    for part in parts:
        path = f"{path}/{part}"
        try:
            found = os.lstat(path)
        except OSError:
            return None
        if stat.S_ISLNK(found.st_mode):
            raise NotPlain(relative)
    return found.st_size if found is not None else None


def is_temp_name(name: str) -> bool:
    """A temporary file of a write in progress: ``.<name>.<random>.part``. Final names never start with a dot."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


@contextlib.contextmanager
def temp_beside(target: Path) -> Iterator[tuple[int, Path]]:
    """A new temporary file beside ``target`` (the one naming rule :func:`is_temp_name` knows), removed
    again unless the caller moved it into place."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name[:40]}.", suffix=TEMP_SUFFIX, dir=target.parent)
    tmp = Path(name)
    try:
        yield fd, tmp
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_write(target: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Write ``target`` whole or not at all: a temporary file beside it, then ``os.replace``."""
    with temp_beside(target) as (fd, tmp):
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.chmod(tmp, mode)
        os.replace(tmp, target)


def save_stream(
    chunks: Iterable[bytes],
    target: Path,
    *,
    expected_size: int | None,
) -> tuple[int, str]:
    """Write ``chunks`` to ``target`` atomically; return (size, sha256 hex).

    The bytes go to a temporary file beside the target, are checked (non-empty, and the size the
    server announced), fsynced and renamed into place; the folder is fsynced too. On any failure the
    temporary file is removed and nothing appears under the final name. A short body raises
    :class:`TransientError` (worth a retry); a full or read-only disk raises :class:`LocalStorageError`.
    """
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name[:40]}.", suffix=TEMP_SUFFIX, dir=folder)
    except OSError as exc:
        raise _storage_error(exc, folder) from None
    tmp = Path(tmp_name)  # named by the rule of temp_beside; errors here map to storage errors, hence apart
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                if chunk:
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            if expected_size is not None and size != expected_size:
                raise TransientError(
                    f"download truncated: got {size} of {expected_size} bytes", code="TRUNCATED"
                )
            if size == 0:
                raise TransientError("download was empty", code="EMPTY")
            out.flush()
            os.fchmod(
                out.fileno(), new_file_mode()
            )  # mkstemp made it 0600: the umask decides, as for any file
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        _remove(tmp)
        raise _storage_error(exc, target) from None
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(folder)
    return size, digest.hexdigest()


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process's umask.

    Linux shows the umask in /proc (one small read per file); elsewhere it is set and put back, which is
    not thread-safe (a file created meanwhile by another thread would get the 0o077 mask: stricter, never
    looser).
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _storage_error(exc: OSError, path: Path) -> Exception:
    reason = exc.strerror or str(exc)
    if exc.errno in _FATAL_ERRNOS:
        return LocalStorageError(f"cannot write {path}: {reason}")
    return DownloadFailed(f"cannot write {path}: {reason}")


def file_matches(path: Path, size: int | None) -> bool:
    """The cheap presence check of the skip rule: the file is there with the recorded size."""
    try:
        return size is not None and path.stat().st_size == size
    except OSError:
        return False


def hash_file(path: Path, chunk_size: int = 1024 * 1024) -> tuple[int, str]:
    """(size, sha256) of a file on disk, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
