"""How long ``events`` rows are kept: ``[storage] keep_events_days``, applied by the runner once a run is over
(its lock still held)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from ..errors import LocalStorageError
from .db import StoreBase

log = logging.getLogger(__name__)


class Retention(StoreBase):
    """Pruning of old ``events``."""

    def prune_events(self, older_than_days: int) -> int:
        """Delete events recorded more than ``older_than_days`` days ago (0: keep all); return how many.

        Never raises: a failed prune (a full disk, say) is logged and left for the next run, which tries again.
        """
        if older_than_days <= 0 or self.readonly:
            return 0
        cutoff = (datetime.now(UTC) - timedelta(days=older_than_days)).replace(microsecond=0)
        at = cutoff.isoformat().replace("+00:00", "Z")  # the format of utcnow(): compares as text
        try:
            with self._writing() as conn:
                deleted = conn.execute("delete from events where at < ?", [at]).rowcount
        except LocalStorageError as exc:
            log.warning("old events were not pruned: %s", exc.message)
            return 0
        if deleted:
            log.info("pruned %d events older than %d days", deleted, older_than_days)
        return int(deleted)
