"""The SQLite state, through sqlite-utils: the only package that names a column.

Data flows in as :class:`~imgsync.models.Outcome`\\ s, listed items and journal entries, and out as
:class:`~imgsync.models.StoredImage`\\ s and the read models of ``status``, ``report`` and ``verify``; nothing
outside this package writes SQL. :class:`Store` is the one façade, one part per table or read model:

- :mod:`.db`: the connection (read-write, read-only, immutable), its checks, and the write transaction;
- :mod:`.migrations`: the numbered migrations, recorded in ``_migrations``;
- :mod:`.images` (``images`` and the ``events`` of a run), :mod:`.runs`, :mod:`.tokens` (``oauth_tokens``),
  :mod:`.products` (what ``sync --all`` listed), :mod:`.restores` (the restore journal);
- :mod:`.reads`: the read models; :mod:`.retention`: old events pruned;
- :mod:`.lock`: the run lock and the token lock, files beside the database (not database concepts).

One :class:`Store` is shared by the threads of a run; a lock serialises its use of the connection.
"""

from .db import SQLITE_MAGIC, StoreBase
from .images import Images
from .lock import TOKEN_LOCK_TIMEOUT_S, lock_held, run_lock, token_lock
from .migrations import MIGRATIONS, RUN_TOTALS
from .products import Products
from .reads import Reads
from .restores import OTHER_BYTES, Restores
from .retention import Retention
from .runs import Runs
from .times import utcnow
from .tokens import Tokens, stored_tokens


class Store(Images, Runs, Tokens, Products, Restores, Reads, Retention, StoreBase):
    """The state database. Use as a context manager, or call :meth:`close`.

    ``readonly=True`` (a dry run, ``status``, ``verify``) never writes the file: it is opened read-only,
    and when it lacks migrations (or does not exist) they run on a private in-memory copy. Otherwise the
    file is created readable by its owner only (it holds renewed OAuth tokens) and switched to WAL.
    """


__all__ = [
    "MIGRATIONS",
    "OTHER_BYTES",
    "RUN_TOTALS",
    "SQLITE_MAGIC",
    "TOKEN_LOCK_TIMEOUT_S",
    "Store",
    "lock_held",
    "run_lock",
    "stored_tokens",
    "token_lock",
    "utcnow",
]
