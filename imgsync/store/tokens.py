"""The ``oauth_tokens`` table: renewed OAuth pairs, so that the next run (or another process) uses them."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from .db import StoreBase
from .times import utcnow


class Tokens(StoreBase):
    """The OAuth pair of a portal, by key."""

    def load_tokens(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            rows = list(self.db.query("select * from oauth_tokens where key = ?", [key]))
            return rows[0] if rows else None

    def save_tokens(self, key: str, access_token: str, refresh_token: str, seed: str) -> None:
        with self._writing():
            self.db.table("oauth_tokens").upsert(
                {
                    "key": key,
                    "access_token": access_token,
                    "refresh_token": refresh_token,
                    "seed": seed,
                    "updated_at": utcnow(),
                },
                pk="key",
            )


def stored_tokens(db_path: Path, key: str) -> dict[str, Any] | None:
    """The OAuth pair the database holds now, read through a connection of its own: another process may have
    renewed it a moment ago (a dry run's own copy of the database would not show it). None when there is none."""
    if not db_path.exists():
        return None
    con: sqlite3.Connection | None = None
    try:
        con = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        con.row_factory = sqlite3.Row
        row = con.execute("select * from oauth_tokens where key = ?", [key]).fetchone()
    except sqlite3.Error:
        return None
    finally:
        if con is not None:
            con.close()
    return dict(row) if row else None
