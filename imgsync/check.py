"""``imgsync check``: a quick look at the setup, in seconds, before the first sync (or after a change).

One line per check, in this order::

    ok    dest: /srv/images is writable
    ok    database: /srv/imgsync.db is writable (1204 images recorded)
    ok    portal: example.bitrix24.com answers, catalog scope granted
    FAIL  s3: S3 bucket 'backups' does not exist at http://127.0.0.1:9000: create it, or fix s3.bucket ...

The portal check is one ``batch`` call: ``scope`` (which scopes the credentials carry) and
``catalog.productImage.list`` for product 1. Any answer of the catalog method but a refusal proves access to
``catalog.productImage.*``: a list, or "product not found". ``insufficient_scope`` and ``NO_AUTH_FOUND`` are
exit 3, an unreachable portal 4, a configuration problem 2, as for ``imgsync sync``; the command exits with the
code of the first check that failed. Retries are few and short, so a bad setup is reported in seconds.

Nothing is left behind: dest gets (and loses) a probe file, the database is created or migrated as a sync
would, and S3 gets a probe object ``<prefix>.imgsync-check`` that is deleted at once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from .bitrix import RetryPolicy
from .config import Settings, validate_for_sync
from .errors import AuthError, ConfigError, ImageDenied, ImageError, ImageGone, ImgsyncError, StateError
from .redact import redact
from .runner import check_dest, make_client, make_uploader
from .store import Store, lock_held

__all__ = ["Check", "exit_code", "run_checks"]

#: At most this long per HTTP request, and this few attempts: a check reports, it does not wait out an outage.
CHECK_TIMEOUT_S = 5.0
CHECK_RETRY = RetryPolicy(attempts=2, base=0.1, cap=0.5, max_wait_for_reset=2.0)
#: The product the portal check lists; "not found" proves access as well as a list does.
PROBE_PRODUCT_ID = 1


@dataclass(frozen=True)
class Check:
    """The outcome of one check: its name, whether it passed, what it found, and the exit code if not."""

    name: str
    ok: bool
    message: str
    exit_code: int = 0

    def line(self) -> str:
        return f"{'ok' if self.ok else 'FAIL':<5} {self.name}: {redact(self.message)}"


def exit_code(checks: list[Check]) -> int:
    """The exit code of the first failed check, or 0."""
    return next((c.exit_code for c in checks if not c.ok), 0)


def run_checks(settings: Settings, *, on_check: Callable[[Check], None] | None = None) -> list[Check]:
    """Run every check (each whatever the others found); ``on_check`` sees each one as it completes."""
    done: list[Check] = []

    def report(check: Check) -> None:
        done.append(check)
        if on_check is not None:
            on_check(check)

    report(_check_dest(settings))
    store, check = _check_database(settings)
    report(check)
    try:
        # The store stays open for OAuth: tokens the portal check renews are saved, never lost.
        report(_check_portal(settings, store))
    finally:
        if store is not None:
            store.close()
    if settings.s3_enabled:
        report(_check_s3(settings))
    return done


def _check_dest(settings: Settings) -> Check:
    try:
        check_dest(settings.dest, create=True)
    except ImgsyncError as exc:
        return Check("dest", False, exc.message, exc.exit_code)
    return Check("dest", True, f"{settings.dest} is writable")


def _check_database(settings: Settings) -> tuple[Store | None, Check]:
    try:
        store = Store(settings.db)
    except ImgsyncError as exc:
        return None, Check("database", False, exc.message, exc.exit_code)
    try:
        # A write transaction, rolled back: a read-only file or folder fails here, not in the night's sync.
        conn = store.db.conn
        conn.execute("begin immediate")
        conn.execute("update _migrations set name = name")
        conn.execute("rollback")
        images = sum(store.counts_by_status().values())
    except sqlite3.Error as exc:
        store.close()
        error = StateError(f"{settings.db}: the state database cannot be written ({exc})")
        return None, Check("database", False, error.message, error.exit_code)
    running = ", a sync is running on it now" if lock_held(settings.db) else ""
    return store, Check("database", True, f"{settings.db} is writable ({images} images recorded{running})")


def _check_portal(settings: Settings, store: Store | None) -> Check:
    if settings.auth_mode is None:
        try:
            validate_for_sync(settings)
        except ConfigError as exc:
            return Check("portal", False, exc.message, exc.exit_code)
    try:
        client = make_client(
            settings, store, workers=1, timeout=min(settings.timeout, CHECK_TIMEOUT_S), retry=CHECK_RETRY
        )
        host = urlsplit(client.auth.portal_root).netloc
        answers = client.batch(
            {"scope": "scope", "images": f"catalog.productImage.list?productId={PROBE_PRODUCT_ID}"}
        )
    except ImgsyncError as exc:
        return Check("portal", False, exc.message, exc.exit_code)
    scopes = answers["scope"].value
    if isinstance(scopes, list) and "catalog" not in scopes:
        granted = ", ".join(str(s) for s in scopes) or "none"
        error = AuthError(
            f"the webhook or app lacks the 'catalog' scope: add it in the portal (granted: {granted})"
        )
        return Check("portal", False, f"{host}: {error.message}", error.exit_code)
    images = answers["images"].value
    if isinstance(images, ImageDenied):
        error = AuthError(
            "catalog.productImage.list was refused: the webhook's user must be an administrator "
            f"({images.message})"
        )
        return Check("portal", False, f"{host}: {error.message}", error.exit_code)
    if isinstance(images, ImageError) and not isinstance(images, ImageGone):
        return Check("portal", False, f"{host}: catalog.productImage.list failed: {images.message}", 1)
    return Check("portal", True, f"{host} answers, catalog scope granted")


def _check_s3(settings: Settings) -> Check:
    if not settings.s3_bucket:
        return Check(
            "s3", False, "S3 is enabled but no bucket is set: s3.bucket, IMGSYNC_S3_BUCKET or --s3-bucket", 2
        )
    try:
        uploader = make_uploader(settings)
        assert uploader is not None
        uploader.check()
        key = uploader.probe()  # type: ignore[attr-defined]
    except ImgsyncError as exc:
        return Check("s3", False, exc.message, exc.exit_code)
    where = getattr(uploader, "where", "")
    return Check(
        "s3",
        True,
        f"bucket '{settings.s3_bucket}' at {where} is reachable and writable (wrote and deleted {key})",
    )
