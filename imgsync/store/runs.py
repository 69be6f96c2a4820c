"""The ``runs`` table: one row per sync or restore, ``running`` while its process holds the run lock,
then ``finished`` with the counts of its JSON summary, or found ``crashed`` by the next run."""

from __future__ import annotations

from typing import Any

from ..models import RunStats
from .db import StoreBase
from .migrations import RUN_TOTALS
from .times import utcnow


class Runs(StoreBase):
    """The life of a ``runs`` row, and the reads of ``status`` and ``report`` over them."""

    def start_run(self, command: str = "sync") -> int:
        """Record a new run (``running``) of ``command`` (``sync`` or ``restore``). Runs still ``running`` from
        before cannot be: the caller holds the lock. They crashed; they are marked so, with the counts their
        events hold."""
        with self._writing() as conn:
            for (run_id,) in conn.execute("select id from runs where state = 'running'").fetchall():
                counts = dict.fromkeys(("downloaded", "uploaded", "missing", "failed"), 0)
                for action, n in conn.execute(
                    "select action, count(*) from events where run_id = ? group by action", [run_id]
                ):
                    if action in counts:
                        counts[action] = n
                conn.execute(
                    "update runs set state = 'crashed', downloaded = ?, uploaded = ?, missing = ?, failed = ?, "
                    "error = ? where id = ?",
                    [
                        counts["downloaded"],
                        counts["uploaded"],
                        counts["missing"],
                        counts["failed"],
                        "crashed: the process ended without recording the end of the run (killed?)",
                        run_id,
                    ],
                )
            table = self.db.table("runs")
            table.insert({"started_at": utcnow(), "state": "running", "command": command})
            return int(table.last_pk or 0)

    def finish_run(self, run_id: int, counts: dict[str, Any], exit_code: int, error: str = "") -> None:
        fields = {
            k: counts.get(k)
            for k in (
                "requested",
                "downloaded",
                "unchanged",
                "uploaded",
                "missing",
                "failed",
                "duration_s",
                *RUN_TOTALS,
            )
        }
        fields["complete"] = int(bool(counts.get("complete", True)))
        with self._writing():
            self.db.table("runs").update(
                run_id,
                {
                    **fields,
                    "finished_at": utcnow(),
                    "exit_code": exit_code,
                    "error": error or None,
                    "state": "finished",
                },
            )

    def last_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.db.query("select * from runs order by id desc limit ?", [limit]))

    _RUN_STATS = (
        "id, started_at, finished_at, exit_code, coalesce(requested, 0), coalesce(downloaded, 0), "
        "coalesce(unchanged, 0), coalesce(uploaded, 0), coalesce(missing, 0), coalesce(failed, 0), "
        "duration_s, error"
    )

    def recent_runs(self, limit: int) -> list[RunStats]:
        """The last ``limit`` runs, newest first."""
        with self._lock:
            rows = self.db.execute(f"select {self._RUN_STATS} from runs order by id desc limit ?", [limit])
            return [RunStats(*row) for row in rows.fetchall()]

    def run_count(self) -> int:
        with self._lock:
            return int(self.db.execute("select count(*) from runs").fetchone()[0])

    def last_successful_run(self) -> RunStats | None:
        """The newest finished run that exited 0."""
        with self._lock:
            row = self.db.execute(
                f"select {self._RUN_STATS} from runs where exit_code = 0 and finished_at is not null "
                "order by id desc limit 1"
            ).fetchone()
        return RunStats(*row) if row else None
