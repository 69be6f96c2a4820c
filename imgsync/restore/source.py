"""Another portal's backup as the source of a restore: its database (never written), its files and objects.

The source database is opened with SQLite's ``immutable=1``: no lock is taken and no ``-wal`` or ``-shm``
file appears beside it, so its folder is left exactly as it was. When a ``-wal`` with content lies beside it
(a sync on the source was killed before its checkpoint), ``immutable`` would not read it: the database and
its ``-wal`` are copied to a private temporary folder and the copy is read instead.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import AlreadyRunning, ConfigError, UsageError
from ..models import S3Object, StoredImage
from ..store import Store, lock_held

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourcePortal:
    """A restore from another portal's backup (``--from-db`` and what goes with it)."""

    db: Path
    dest: Path | None = None  # --from-dest: the source's files
    s3: bool = False  # --from-s3: the source's objects
    s3_bucket: str | None = None  # None: the config's bucket
    s3_prefix: str | None = None  # None: the keys as the source database recorded them
    map_csv: str | None = None  # --map CSV
    match: str | None = None  # --match xml_id|code

    @property
    def name(self) -> str:
        """What the ``restores`` journal records as ``source_db``: the database's absolute path."""
        return str(self.db.resolve())

    def check(self, target_db: Path) -> None:
        """Usage errors, before anything is opened."""
        if (self.map_csv is None) == (self.match is None):
            raise UsageError("--from-db needs one of --map CSV or --match xml_id|code")
        if self.dest is None and not self.s3:
            raise UsageError("--from-db needs the source's backups: --from-dest DIR and/or --from-s3")
        if not self.db.is_file():
            raise ConfigError(f"--from-db {self.db}: no state database there")
        if target_db.exists() and self.db.resolve() == target_db.resolve():
            raise UsageError(
                f"--from-db {self.db} is the target's own database: a restore to the same portal needs no --from-db"
            )
        if self.dest is not None and not self.dest.is_dir():
            raise ConfigError(f"--from-dest {self.dest}: no such folder")
        if lock_held(self.db):
            raise AlreadyRunning(f"{self.db}: an imgsync run is writing the source database; try again later")


@contextmanager
def open_source(path: Path) -> Iterator[Store]:
    """The source database, read without a byte written beside it (see the module docstring)."""
    wal = path.with_name(path.name + "-wal")
    if not (wal.exists() and wal.stat().st_size > 0):
        with Store(path, immutable=True) as store:
            yield store
        return
    with tempfile.TemporaryDirectory(prefix="imgsync-source-") as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
        log.info("%s has a -wal file beside it: reading a private copy", path)
        with Store(copy) as store:
            store.path = path  # messages name the source, not the copy
            yield store


def source_rows(rows: Sequence[StoredImage], source: SourcePortal, default_prefix: str) -> list[StoredImage]:
    """The source's rows as the restore reads their backups: without ``--from-dest`` no local file is
    read; with ``--from-s3`` each object's key (under ``--from-s3-prefix`` when given, else as recorded, else
    the config's prefix and the file's path)."""
    out = []
    for row in rows:
        local = row.local_path if source.dest is not None else None
        s3 = None
        if source.s3:
            key = _key(row, source.s3_prefix, default_prefix)
            s3 = S3Object(key, None, row.sha256 or "") if key else None
        out.append(replace(row, local_path=local, s3=s3))
    return out


def _key(row: StoredImage, prefix: str | None, default_prefix: str) -> str | None:
    recorded = row.s3.key if row.s3 is not None else None
    relative = row.local_path
    if recorded is not None:
        at = recorded.rfind(f"{row.product_id}/{row.image_id}-")
        if at >= 0:
            relative = recorded[at:]
    if prefix is not None and relative:
        return prefix + relative
    if recorded is not None:
        return recorded
    return default_prefix + relative if relative else None
