"""``imgsync status``: counts by status and the last runs, or each failed image (``--failed``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import StateError
from ..models import ImageRef
from ..redact import redact
from ..store import Store, lock_held
from ._options import config_option, settings_for
from ._output import handle_errors


@click.command()
@config_option
@click.option("--db", type=click.Path(dir_okay=False), default=None, help="State database.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option(
    "--runs", "n_runs", type=click.IntRange(1, 1000), default=5, help="How many recent runs to show."
)
@click.option("--failed", "failed_only", is_flag=True, help="Each failed image, with its reason and when.")
@click.pass_context
def status(ctx: click.Context, db: str | None, as_json: bool, n_runs: int, failed_only: bool) -> None:
    """Summarise the state database: counts by status, the last runs (--failed: each failed image)."""
    with handle_errors():
        settings = settings_for(ctx, db=db)
        if not settings.db.exists():
            raise StateError(f"{settings.db}: no state database yet (run 'imgsync sync' first)")
        if failed_only:
            _status_failed(settings.db, as_json)
            return
        running = lock_held(settings.db)
        with Store(settings.db, readonly=True) as store:
            counts = store.counts_by_status()
            runs = store.last_runs(n_runs)
            _backed_up, bytes_ok = store.totals()
            catalog = store.listed_items() if store.catalog_size() else None
            restores = store.restore_counts()
            restored_by_run = store.restored_by_run(
                [run["id"] for run in runs if run.get("command") == "restore"]
            )
        for run in runs:
            run["command"] = run.get("command") or "sync"
            if run["command"] == "restore":
                run["restored"] = restored_by_run.get(run["id"], 0)
        restored = restores["restored_images"]
        adds = {key[len("adds_") :]: n for key, n in restores.items() if key.startswith("adds_")}
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "db": str(settings.db),
                        "images": counts,
                        "total": sum(counts.values()),
                        "bytes_ok": bytes_ok,
                        "catalog_items": catalog,
                        "restored": restored,
                        "restore_adds": adds,
                        "runs": runs,
                    }
                )
            )
            return
        click.echo(f"database: {settings.db}")
        click.echo(f"images:   {sum(counts.values())} ({bytes_ok} bytes backed up)")
        if catalog is not None:
            click.echo(f"catalog:  {catalog} items listed by the last sync --all")
        for name, n in counts.items():
            click.echo(f"  {name:<8} {n}")
        if restored or adds:
            click.echo(
                f"restored: {restored} image{'' if restored == 1 else 's'} put back by imgsync restore, under new ids"
                + (
                    f" (adds: {', '.join(f'{n} {state}' for state, n in sorted(adds.items()))})"
                    if adds
                    else ""
                )
            )
        if runs:
            click.echo("last runs:")
            for run in runs:
                if run["command"] == "restore":
                    click.echo(
                        f"  #{run['id']:<5} {run['started_at']}  {_run_outcome(run, running)}"
                        f"  restore: selected {run['requested'] or 0}, restored {run['restored']}, "
                        f"failed {run['failed'] or 0}, deferred {run['deferred'] or 0}"
                        + (f"  ({run['error']})" if run.get("error") else "")
                    )
                    continue
                click.echo(
                    f"  #{run['id']:<5} {run['started_at']}  {_run_outcome(run, running)}"
                    f"  requested {run['requested'] or 0}, downloaded {run['downloaded'] or 0}, "
                    f"unchanged {run['unchanged'] or 0}, uploaded {run['uploaded'] or 0}, "
                    f"missing {run['missing'] or 0}, failed {run['failed'] or 0}"
                    + (f"  ({run['error']})" if run.get("error") else "")
                )


def _status_failed(db: Path, as_json: bool) -> None:
    """``status --failed``: one line (or one JSON object in a streamed array) per failed image."""
    n = 0
    with Store(db, readonly=True) as store:
        if as_json:
            click.echo(f'{{"db": {json.dumps(str(db))}, "failed": [', nl=False)
        for n, row in enumerate(store.iter_failed(), start=1):
            if as_json:
                click.echo(
                    ("" if n == 1 else ", ") + json.dumps({**row, "reason": redact(row["reason"])}), nl=False
                )
            else:
                ref = ImageRef(row["product_id"], row["image_id"])
                click.echo(f"{str(ref):<15} {row['at'] or '-':<20}  {redact(row['reason'])}")
    if as_json:
        click.echo(f'], "count": {n}}}')
    else:
        click.echo(f"{n} failed image{'' if n == 1 else 's'}")


def _run_outcome(run: dict[str, Any], running: bool) -> str:
    """``exit 0``, ``running`` (its lock is held), or ``crashed`` (it ended without recording its end)."""
    if run.get("state") == "running":
        return "running" if running else "crashed"
    if run.get("state") == "crashed":
        return "crashed"
    return f"exit {run['exit_code'] if run['exit_code'] is not None else '-'}"
