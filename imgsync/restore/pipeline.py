"""The restore's work: look at the target products, plan each image, send the adds, check what landed.

Exactly once: an add is committed to the ``restores`` journal as ``sent`` before it leaves, and its answer
completes the row. An add without a sure answer (a lost answer, a killed run) stays ``sent``: before
anything is sent to its product again, the product is looked at, once the request can no longer be running
on the portal (:attr:`RestoreOptions.lifetime_s`), and an image with those bytes is taken as the add's
result. Only an add proven not made is sent again. So no interleaving of kills, lost answers and retries
adds the same bytes to a product twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..bitrix import Client
from ..errors import (
    ImageError,
    ImgsyncError,
    InternalError,
    Interrupted,
    RequestTooLarge,
    SendUnknown,
    TransientError,
)
from ..models import ImageRef, ImageUpload, PortalImage, RestoreEntry, StopRequest, StoredImage
from ..store import OTHER_BYTES, Store
from ..sync.plan import Uploader
from .backup import ObjectReader, read_backup
from .plan import SLOTS, RestoreAction, RestorePlan, TargetProduct, decide_restore
from .summary import RestoreSummary
from .target import Keeper, look_at

log = logging.getLogger(__name__)

ADD = "catalog.productImage.add"
#: Seconds of ``operating`` time one add is taken to cost before the portal has said (the docs' example).
ADD_COST_GUESS = 1.1
#: Products looked at per ``catalog.productImage.list`` batch.
PRODUCTS_PER_LOOK = 50
#: Rounds of a run: adds without a sure answer are settled, and what was not made is planned again.
MAX_ROUNDS = 3


@dataclass(frozen=True)
class RestoreOptions:
    dest: Path  # the target's dest: new images' files land here
    source_dest: Path  # where the backups' files are (the target's dest for a same-portal restore)
    dry_run: bool = False
    replace: bool = False
    force: bool = False
    keep_local: bool = True
    max_request_bytes: int = 8 * 1024 * 1024
    request_limit_s: float = 60.0  # the longest a request may run on the portal (the cloud's limit)
    timeout_s: float = 30.0
    max_duration_s: float | None = None
    max_bytes: int | None = None
    source_db: str | None = None  # another portal's database; None: the target's own

    @property
    def lifetime_s(self) -> float:
        """How long after it was sent a request may still be running on the portal (a batch of adds goes
        on after its client has gone): only older ``sent`` rows are looked for on the product."""
        return max(self.timeout_s, self.request_limit_s) + 1.0


@dataclass(frozen=True)
class Group:
    """The selected images of one source product, and where they go (None: no target product)."""

    target_product_id: int | None
    rows: tuple[StoredImage, ...]
    unmatched: str = "no target product"


@dataclass
class _Add:
    row: StoredImage
    target: int
    content: bytes
    entry: int = 0
    tries: int = 0  # times the portal refused it as not run


class Restorer:
    """Runs one restore. ``run(groups)`` is the whole job; everything it needs is passed in."""

    def __init__(
        self,
        client: Client,
        store: Store,
        opts: RestoreOptions,
        *,
        uploader: Uploader | None = None,
        objects: ObjectReader | None = None,
        progress: Callable[[str], None] | None = None,
        on_plan: Callable[[RestorePlan], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.opts = opts
        self.uploader = uploader
        self.objects = objects
        self.progress = progress or (lambda action: None)
        self.on_plan = on_plan
        self.stop = stop or client.stop
        self.summary = RestoreSummary(plan=[] if opts.dry_run else None)
        self.capped: str | None = None
        self._final: set[ImageRef] = set()
        self._selected: dict[ImageRef, StoredImage] = {}
        self._target_of: dict[ImageRef, int | None] = {}
        self._seen: dict[int, TargetProduct] = {}  # products just looked at by _settle, for the next round
        self._blocked: set[int] = set()  # target products with an add of unknown outcome still too young
        self._max_adds = 50  # lowered when the web tier refuses a request as too large
        self._started = time.monotonic()
        self.keeper = Keeper(
            client, store, opts.dest, uploader, keep_local=opts.keep_local, dry_run=opts.dry_run
        )

    # -- the whole run ----------------------------------------------------------------------------
    def run(self, groups: Sequence[Group]) -> RestoreSummary:
        s = self.summary
        self._started = time.monotonic()
        for group in groups:
            for row in group.rows:
                self._selected[row.ref] = row
                self._target_of[row.ref] = group.target_product_id
        s.selected = len(self._selected)
        if not self.opts.dry_run:
            s.run_id = self.store.start_run("restore")
            self.keeper.run_id = s.run_id  # what it keeps is recorded as this run's
        try:
            self._settle()
            todo: Sequence[Group] = groups
            for _round in range(MAX_ROUNDS):
                again = self._round(todo)
                if not again or self.opts.dry_run or self.capped:
                    break
                self._settle()
                todo = [g for g in groups if g.target_product_id in again]
            for ref, row in self._selected.items():
                if ref in self._final:
                    continue
                if self.capped or self._target_of.get(ref) in self._blocked:
                    self._defer(row)
                else:
                    self._fail(
                        row, "its add has no known outcome yet: the next run looks at the product first"
                    )
        except ImgsyncError as exc:
            s.error, s.exit_code = exc.message, exc.exit_code
            if isinstance(exc, Interrupted) and isinstance(self.stop, StopRequest):
                s.exit_code = self.stop.exit_code
            exc.summary = s
            raise
        except KeyboardInterrupt:
            stopped = Interrupted("interrupted")
            s.error = stopped.message
            s.exit_code = self.stop.exit_code if isinstance(self.stop, StopRequest) else stopped.exit_code
            stopped.summary = s
            raise stopped from None
        except Exception as exc:
            internal = InternalError(f"internal error: {type(exc).__name__}: {exc}")
            s.error, s.exit_code = internal.message, internal.exit_code
            internal.summary = s
            raise internal from exc
        finally:
            self._close()
        return s

    def _close(self) -> None:
        s = self.summary
        s.duration_s = time.monotonic() - self._started
        if self.capped is not None:
            s.complete = False
            log.warning("%s reached: %d images left for the next run", self.capped, s.deferred)
        if s.deferred:
            s.complete = False
        if not s.exit_code:
            s.exit_code = 1 if s.failed else 5 if s.deferred else 0
        s.complete = s.complete and not s.error
        s.requests, s.retries = self.client.requests_sent, self.client.retries
        s.answers_503, s.answers_429 = self.client.answers_503, self.client.answers_429
        if not self.opts.dry_run and s.run_id is not None:
            counts = {
                "requested": s.selected,
                "failed": s.failed,
                "deferred": s.deferred,
                "complete": s.complete,
                "requests": s.requests,
                "retries": s.retries,
                "duration_s": s.duration_s,
            }
            self.store.finish_run(s.run_id, counts, s.exit_code, s.error or "")

    # -- outcomes ---------------------------------------------------------------------------------
    def _done(self, row: StoredImage, action: str) -> None:
        self._final.add(row.ref)
        self.progress(action)

    def _fail(self, row: StoredImage, reason: str) -> None:
        log.warning("%s failed: %s", row.ref, reason)
        self.summary.add_failure(row.product_id, row.image_id, reason)
        self._done(row, "failed")

    def _defer(self, row: StoredImage) -> None:
        self.summary.deferred += 1
        self._done(row, "deferred")

    def _restored(self, row: StoredImage, target: int, new_image_id: int) -> None:
        if self.opts.source_db is None:
            self.store.mark_restored(row.ref, new_image_id)
        self.summary.add_restored(row.product_id, row.image_id, target, new_image_id)
        log.info("restored %s as %d:%d", row.ref, target, new_image_id)
        self._done(row, "restored")

    def _cap(self) -> str | None:
        opts = self.opts
        if opts.dry_run:
            return None
        if opts.max_bytes is not None and self.summary.bytes_sent >= opts.max_bytes:
            return f"--max-bytes {opts.max_bytes}"
        if opts.max_duration_s is not None and time.monotonic() - self._started >= opts.max_duration_s:
            return f"--max-duration {opts.max_duration_s:g}s"
        return None

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Interrupted("interrupted")

    # -- adds of unknown outcome ------------------------------------------------------------------
    def _settle(self) -> None:
        """Find out what became of adds whose answer never came (this run's or a killed run's)."""
        if self.opts.dry_run:
            return
        entries = self.store.journal_pending(self.opts.source_db)
        if not entries:
            return
        newest = max(_parse_time(e.sent_at) for e in entries)
        wait = newest + self.opts.lifetime_s - time.time()
        if wait > 0:
            limit = self.opts.max_duration_s
            if limit is not None and time.monotonic() - self._started + wait >= limit:
                self.capped = f"--max-duration {limit:g}s"
                self._blocked |= {e.target_product_id for e in entries}
                return
            log.info(
                "waiting %.1f s before looking at %d products for adds sent without a sure answer",
                wait,
                len({e.target_product_id for e in entries}),
            )
            if self.stop.wait(wait):
                raise Interrupted("interrupted")
        by_target: dict[int, list[RestoreEntry]] = {}
        for entry in entries:
            by_target.setdefault(entry.target_product_id, []).append(entry)
        pids = list(by_target)
        for at in range(0, len(pids), PRODUCTS_PER_LOOK):
            self._check_stop()
            targets = look_at(self.keeper, pids[at : at + PRODUCTS_PER_LOOK])
            for pid, target in targets.items():
                for entry in by_target[pid]:
                    self._settle_one(entry, target)
            # Nothing is sent between settling and planning: the round plans from what was just seen.
            self._seen.update(targets)

    def _settle_one(self, entry: RestoreEntry, target: TargetProduct) -> None:
        if target.error or target.unknown:
            self._blocked.add(target.product_id)  # not decidable now; the add stays "sent"
            return
        if not target.exists:
            self.store.journal_finish(entry.id, error="the product no longer exists")
            return
        claimed = self.store.journal_claimed(target.product_id)
        found = sorted(
            iid for iid, sha in target.hashes.items() if sha == entry.sha256 and iid not in claimed
        )
        if not found:
            log.info(
                "the add of %s to product %d was not made: it is planned again", entry.ref, target.product_id
            )
            self.store.journal_finish(entry.id, error="not made: the product holds no image with these bytes")
            return
        self.store.journal_finish(entry.id, new_image_id=found[0])
        log.info("the add of %s without an answer was made: image %d", entry.ref, found[0])
        row = self._selected.get(entry.ref)
        if row is not None and row.ref not in self._final:
            self._restored(row, target.product_id, found[0])
        elif self.opts.source_db is None:
            self.store.mark_restored(entry.ref, found[0])

    # -- one round: look, plan, send -------------------------------------------------------------
    def _round(self, groups: Sequence[Group]) -> set[int]:
        """Plan and send every image of ``groups`` not yet done; return the target products to look at
        again (an add without a sure answer, or refused as not run)."""
        again: set[int] = set()
        open_groups = [g for g in groups if any(r.ref not in self._final for r in g.rows)]
        for group in [g for g in open_groups if g.target_product_id is None]:
            for row in sorted(group.rows, key=lambda r: r.image_id):
                self._apply(decide_restore(row, None, None, unmatched_reason=group.unmatched), None)
        matched = [g for g in open_groups if g.target_product_id is not None]
        for at in range(0, len(matched), PRODUCTS_PER_LOOK):
            self._check_stop()
            if self._cap() is not None:
                self.capped = self._cap()
                break
            part = matched[at : at + PRODUCTS_PER_LOOK]
            pids = [
                pid
                for pid in dict.fromkeys(g.target_product_id for g in part)
                if pid is not None and pid not in self._blocked
            ]
            targets = {pid: self._seen.pop(pid) for pid in pids if pid in self._seen}
            unseen = [pid for pid in pids if pid not in targets]
            targets |= look_at(self.keeper, unseen) if unseen else {}
            adds: list[_Add] = []
            for group in part:
                assert group.target_product_id is not None
                target = targets.get(group.target_product_id)
                if target is None:
                    continue  # blocked: deferred at the end
                adds += self._plan_group(group, target)
            again |= self._send(adds)
        self._seen.clear()  # adds were sent since: what was seen is stale
        return again

    def _plan_group(self, group: Group, target: TargetProduct) -> list[_Add]:
        """Plan a product's images: its slots first (the newest backup of a slot wins it: one picture per
        slot), then its gallery in the order of the original image ids."""
        open_rows = [r for r in group.rows if r.ref not in self._final]
        slot_rows = sorted((r for r in open_rows if r.type in SLOTS), key=lambda r: -r.image_id)
        rows = slot_rows + sorted((r for r in open_rows if r.type not in SLOTS), key=lambda r: r.image_id)
        refused = self.store.refused_bytes([r.ref for r in rows], self.opts.source_db)
        planned: set[str] = set()
        slots: dict[str, int] = {}
        adds: list[_Add] = []
        for row in rows:

            def decide(problem: str | None, row: StoredImage = row) -> RestorePlan:
                return decide_restore(
                    row,
                    target,
                    problem,
                    replace=self.opts.replace,
                    refused=refused.get(row.ref),
                    force=self.opts.force,
                    planned=frozenset(planned),
                    slots_planned=slots,
                )

            plan = decide(None)
            content = None
            if plan.action == RestoreAction.RESTORE:
                content, problem = read_backup(row, self.opts.source_dest, self.objects)
                if content is None:
                    plan = decide(problem)
            if plan.action == RestoreAction.RESTORE:
                if row.sha256:
                    planned.add(row.sha256)
                if row.type in SLOTS:
                    slots[row.type] = row.image_id
            self._apply(plan, content)
            if content is not None and plan.action == RestoreAction.RESTORE and not self.opts.dry_run:
                adds.append(_Add(row, target.product_id, content))
        return adds

    def _apply(self, plan: RestorePlan, content: bytes | None) -> None:
        """Count a plan's outcome, unless it is an add still to be sent."""
        s = self.summary
        if self.on_plan is not None:
            self.on_plan(plan)
        row = plan.row
        if self.opts.dry_run:
            assert s.plan is not None
            s.plan.append(plan.as_json())
            if plan.action == RestoreAction.RESTORE:
                s.restored += 1
                s.bytes_sent += len(content or b"")
                self._done(row, str(plan.action))
                return
        elif plan.action == RestoreAction.RESTORE:
            return
        if plan.action == RestoreAction.PRESENT:
            s.present += 1
            self._done(row, str(plan.action))
        elif plan.action == RestoreAction.SLOT_TAKEN:
            s.skipped += 1
            log.info("%s: slot taken: %s", row.ref, plan.reason)
            self._done(row, str(plan.action))
        else:
            self._fail(row, f"{plan.action}: {plan.reason}")

    # -- sending ----------------------------------------------------------------------------------
    def _request_size(self) -> int:
        """How many adds one request may carry: what the portal can finish within half its request limit
        at the add time measured so far, at most 50 (and fewer after a 413)."""
        cost = self.client.operating.cost(ADD) or ADD_COST_GUESS
        return max(1, min(self._max_adds, int(0.5 * self.opts.request_limit_s / max(cost, 0.001))))

    def _pack(self, queue: Sequence[_Add]) -> list[_Add]:
        limit, budget = self._request_size(), self.opts.max_request_bytes
        out: list[_Add] = []
        size = 0
        for add in queue:
            encoded = 4 * ((len(add.content) + 2) // 3)
            if out and (len(out) >= limit or size + encoded > budget):
                break
            out.append(add)
            size += encoded
        return out

    def _send(self, adds: list[_Add]) -> set[int]:
        again: set[int] = set()
        queue = list(adds)
        while queue:
            self._check_stop()
            cap = self._cap()
            if cap is not None:
                self.capped = cap
                for add in queue:
                    if add.target not in again:
                        self._defer(add.row)
                break
            batch = [a for a in self._pack([a for a in queue if a.target not in again])]
            if not batch:
                break  # the rest wait for their products to be looked at again
            for add in batch:
                queue.remove(add)
            try:
                results = self._send_batch(batch)
            except RequestTooLarge as exc:
                for add in batch:
                    self.store.journal_finish(add.entry, error=f"not sent: {exc.message}")
                if len(batch) == 1:
                    self._fail(batch[0].row, f"the portal refused the add as too large ({exc.message})")
                else:
                    self._max_adds = max(1, len(batch) // 2)
                    log.info(
                        "the portal refused %d adds in one request as too large: %d from now on",
                        len(batch),
                        self._max_adds,
                    )
                    queue[:0] = batch
                continue
            except SendUnknown as exc:
                log.warning(
                    "%d adds got no sure answer (%s): their products are looked at before anything more is sent to them",
                    len(batch),
                    exc.message,
                )
                again |= {a.target for a in batch}
                continue
            refused: list[tuple[_Add, TransientError]] = []
            for add, result in zip(batch, results, strict=True):
                if isinstance(result, PortalImage):
                    self.store.journal_finish(add.entry, new_image_id=result.image_id)
                    self._verify(add, result)
                elif isinstance(result, TransientError):
                    # Proven not run (the time limit's 429, the bucket's 503): sent again after the wait the
                    # portal asks for, in order, a bounded number of times.
                    self.store.journal_finish(add.entry, error=f"not run: {result.message}")
                    refused.append((add, result))
                elif isinstance(result, SendUnknown):
                    again.add(add.target)  # the journal row stays "sent"
                else:
                    self.store.journal_finish(add.entry, error=result.message)
                    self._fail(add.row, f"the portal refused the add: {result.message}")
            if refused:
                retry: list[_Add] = []
                for add, why in refused:
                    add.tries += 1
                    if add.tries >= self.client.retry.attempts:
                        self._fail(
                            add.row, f"the portal kept refusing the add ({add.tries} times): {why.message}"
                        )
                    else:
                        retry.append(add)
                if retry:
                    worst = next(
                        (w for _, w in refused if w.retry_after(time.time()) is not None), refused[0][1]
                    )
                    self.client.wait_before_retry(worst, max(a.tries for a in retry), f"{len(retry)} adds")
                    queue[:0] = retry
        return again

    def _send_batch(self, batch: Sequence[_Add]) -> Sequence[PortalImage | ImgsyncError]:
        run_id = self.summary.run_id
        for add in batch:
            row = add.row
            add.entry = self.store.journal_sent(
                run_id, self.opts.source_db, row.ref, add.target, row.sha256 or "", row.type, row.name
            )
        uploads = [ImageUpload(a.target, a.row.type or "MORE_PHOTO", a.row.name, a.content) for a in batch]
        self.summary.bytes_sent += sum(len(a.content) for a in batch)
        return self.client.add_images(uploads)

    def _verify(self, add: _Add, image: PortalImage) -> None:
        """Download the new image and compare its bytes with the backup's; record what the portal holds."""
        row = add.row
        try:
            sha = self.keeper.fetch(image, f"restored from {row.ref}")
        except ImageError as exc:
            self._fail(row, f"added as image {image.image_id}, but it could not be checked: {exc.message}")
            return
        if sha == row.sha256:
            self._restored(row, add.target, image.image_id)
            return
        error = (
            f"{OTHER_BYTES} (added as image {image.image_id} of product {add.target} with sha256 {sha[:16]}..., "
            f"the backup's is {(row.sha256 or '')[:16]}...)"
        )
        if self.opts.source_db is None:
            self.store.note_error(row.ref, error)
        self.store.journal_finish(add.entry, new_image_id=image.image_id, error=error)
        self._fail(row, error)


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def groups_by_product(rows: Iterable[StoredImage]) -> list[Group]:
    """A same-portal restore: each product is its own target."""
    by: dict[int, list[StoredImage]] = {}
    for row in rows:
        by.setdefault(row.product_id, []).append(row)
    return [Group(pid, tuple(items)) for pid, items in sorted(by.items())]
