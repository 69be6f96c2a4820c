"""``imgsync report``: one self-contained HTML page about the backup.

What it shows: the state at a glance (images by status, bytes on disk and in S3, the catalog's size once
``sync --all`` has recorded it, the age of the last successful run), the runs over time as inline SVG, the
failed and missing images grouped by product with a search box, and a contact sheet of the most recently
changed images.

The page needs nothing but its own folder: styles, the script and the charts are inline, and the thumbnails
sit beside it in ``<stem>_files/thumbs/<sha256>.jpg``, made with Pillow from the backed-up files (never
fetched from the portal) and reused by later reports. A Content-Security-Policy forbids every other source.
Every value from the portal goes through Jinja2's autoescaping.

The database is opened read-only and only through :class:`imgsync.store.Store`'s report queries, which
aggregate in SQL or read a bounded number of rows: the report's memory does not grow with the catalog.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import jinja2
from PIL import Image, UnidentifiedImageError

from .errors import ImgsyncError
from .localfs import atomic_write, resolve_inside
from .models import ImageState, RunStats
from .store import Store

__all__ = ["DEFAULT_OUT", "DEFAULT_RECENT", "MAX_PROBLEMS", "MAX_RUNS", "STALE_AFTER", "build_report"]

DEFAULT_OUT = Path("imgsync-report.html")
DEFAULT_RECENT = 200
MAX_PROBLEMS = 2000  # failed and missing images listed; the page says how many more there are
MAX_RUNS = 200  # runs in the charts: more than six months of nightly runs
STALE_AFTER = timedelta(days=2)
THUMB_SIZE = (160, 160)
STATUSES = ("ok", "failed", "missing")

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Tile:
    """One image of the contact sheet."""

    image: ImageState
    thumb: str | None  # URL of the thumbnail, relative to the report
    placeholder: str  # why there is no thumbnail, when there is none
    href: str | None  # URL of the backed-up file, relative to the report


@dataclass(frozen=True)
class RunMark:
    """One run in the charts: the x of its column and the heights of its bars."""

    run: RunStats
    x: float
    width: float
    bars: dict[str, tuple[float, float]]  # series -> (y, height) inside its panel
    duration_y: float | None
    health: str  # ok, warn or bad: how the run ended

    @property
    def label(self) -> str:
        r = self.run
        ended = "unfinished" if r.exit_code is None else f"exit {r.exit_code}"
        took = "" if r.duration_s is None else f", {r.duration_s:.1f} s"
        return (
            f"run {r.id}, {_when(r.started_at)}: {ended}{took}; requested {r.requested}, "
            f"downloaded {r.downloaded}, unchanged {r.unchanged}, failed {r.failed}, missing {r.missing}, "
            f"uploaded {r.uploaded}"
        )


@dataclass(frozen=True)
class Chart:
    """Geometry of the runs charts (SVG user units)."""

    width: int
    panel_height: int
    panels: tuple[tuple[str, str, int], ...]  # (series, title, max value)
    marks: list[RunMark]
    duration_height: int
    duration_max: float
    duration_points: str  # the polyline's points


def build_report(
    store_or_db_path: Store | Path | str,
    dest: Path | str,
    out: Path | str = DEFAULT_OUT,
    recent: int = DEFAULT_RECENT,
    *,
    now: datetime | None = None,
    max_problems: int = MAX_PROBLEMS,
    max_runs: int = MAX_RUNS,
) -> Path:
    """Write the HTML report of the backup in ``dest`` recorded by a state database; return its path.

    ``store_or_db_path`` is an open :class:`Store` (left open) or the path of a database, opened read-only
    (a missing file raises :class:`imgsync.errors.StateError`; none is created). ``recent`` is the number
    of most recently changed images on the contact sheet; ``now`` the time ages are measured from.
    """
    if recent < 0 or max_problems < 0 or max_runs < 1:
        raise ValueError("recent and max_problems must not be negative, max_runs must be positive")
    now = now or datetime.now(UTC)
    dest = Path(dest).resolve()
    out = Path(out).resolve()
    files_dir = out.parent / f"{out.stem}_files"
    with ExitStack() as stack:
        if isinstance(store_or_db_path, Store):
            store = store_or_db_path
        else:
            store = stack.enter_context(Store.open_read_only(store_or_db_path))
        counts = store.counts_by_status()
        totals = store.backup_bytes()
        runs = store.recent_runs(max_runs)
        last_ok = store.last_successful_run()
        tiles = [
            _tile(image, dest, out.parent, files_dir / "thumbs") for image in store.recent_changes(recent)
        ]
        problems_total = counts.get("failed", 0) + counts.get("missing", 0)
        context = {
            "db_path": str(store.path),
            "dest": str(dest),
            "generated_at": _when(now.isoformat()),
            "counts": [(status, counts.get(status, 0)) for status in STATUSES]
            + [(s, n) for s, n in counts.items() if s not in STATUSES],
            "total": sum(counts.values()),
            "totals": totals,
            "catalog_size": store.catalog_size(),
            "last_run": runs[0] if runs else None,
            "last_run_age": _age(runs[0].started_at, now) if runs else None,
            "last_ok": last_ok,
            "last_ok_age": _age(last_ok.finished_at, now) if last_ok else None,
            "stale": last_ok is None or _older(last_ok.finished_at, now, STALE_AFTER),
            "run_count": store.run_count(),
            "chart": _chart(list(reversed(runs))),
            "problems_total": problems_total,
            "problem_groups": _groups(itertools.islice(store.iter_problems(), max_problems)),
            "problems_shown": min(problems_total, max_problems),
            "max_problems": max_problems,
            "tiles": tiles,
            "recent": recent,
            "nonce": secrets.token_urlsafe(18),
            "human_bytes": human_bytes,
            "when": _when,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        _write(out, context)
    return out


def _write(out: Path, context: dict[str, object]) -> None:
    """Render streaming into a temporary file beside ``out``, then put it in place."""
    template = _environment().get_template("report.html.j2")
    with atomic_write(out) as handle:
        stream = template.stream(context)
        stream.enable_buffering(256)  # fewer, larger writes than one per template fragment
        stream.dump(handle, encoding="utf-8")


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("imgsync", "templates"),
        autoescape=True,  # every name and reason comes from the portal
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


# --- the contact sheet ----------------------------------------------------------------------------------------


def _url(target: Path, base: Path) -> str:
    """A relative URL from the folder ``base`` to ``target``, percent-encoded (so no name reads as a scheme)."""
    return quote(Path(os.path.relpath(target, base)).as_posix(), safe="/")


def _tile(image: ImageState, dest: Path, base: Path, thumbs: Path) -> Tile:
    if not image.local_path:
        return Tile(image, None, "in S3 only" if image.s3_key else "no backup file", None)
    try:
        path = resolve_inside(dest, image.local_path)
    except ImgsyncError:
        return Tile(image, None, "recorded path outside the destination", None)
    if not path.is_file():
        return Tile(image, None, "file not found", None)
    href = _url(path, base)
    if not image.sha256 or not _SHA256.fullmatch(image.sha256):
        return Tile(image, None, "no checksum recorded", href)
    thumb = thumbs / f"{image.sha256}.jpg"
    if not thumb.is_file():
        problem = make_thumbnail(path, thumb)
        if problem:
            return Tile(image, None, problem, href)
    return Tile(image, _url(thumb, base), "", href)


def make_thumbnail(source: Path, target: Path, size: tuple[int, int] = THUMB_SIZE) -> str:
    """Write a JPEG thumbnail of ``source`` to ``target`` (atomically); return "" or why it could not."""
    try:
        with Image.open(source) as opened:
            opened.draft("RGB", size)  # JPEG: decode at a reduced scale, much faster for big photos
            img: Image.Image = opened
            img.thumbnail(size)
            if img.mode not in ("RGB", "L"):
                rgba = img.convert("RGBA")
                img = Image.new("RGB", rgba.size, (255, 255, 255))
                img.paste(rgba, mask=rgba.getchannel("A"))
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(target) as handle:
                img.save(handle, "JPEG", quality=82)
    except UnidentifiedImageError:
        return "no preview: not a picture Pillow can read"
    except Image.DecompressionBombError:
        return "no preview: too many pixels"
    except (OSError, ValueError, SyntaxError, EOFError):
        # A truncated or corrupt file fails while decoding, with an OSError or worse.
        return "no preview: a damaged picture"
    return ""


# --- the failure list -----------------------------------------------------------------------------------------


def _groups(problems: Iterator[ImageState]) -> Iterator[tuple[int, list[ImageState]]]:
    """Consecutive rows of one product together (the rows come ordered by product)."""
    for product_id, rows in itertools.groupby(problems, key=lambda p: p.product_id):
        yield product_id, list(rows)


# --- the charts -----------------------------------------------------------------------------------------------

_PANELS = (("downloaded", "downloaded"), ("unchanged", "unchanged"), ("failed", "failed"))


def _chart(
    runs: list[RunStats], width: int = 960, panel_height: int = 56, duration_height: int = 90
) -> Chart:
    """Small multiples, one panel per count, each on its own scale (3 downloads beside 10^6 unchanged)."""
    slot = width / max(len(runs), 1)
    bar = max(min(slot * 0.8, 24.0), 0.5)
    maxima = {series: max([getattr(r, series) for r in runs] + [0]) for series, _ in _PANELS}
    duration_max = max([r.duration_s or 0.0 for r in runs] + [0.0])
    marks = []
    points = []
    for i, run in enumerate(runs):
        x = i * slot + (slot - bar) / 2
        bars = {}
        for series, _ in _PANELS:
            value, top = getattr(run, series), maxima[series]
            height = 0.0 if not top else max(panel_height * value / top, 1.5 if value else 0.0)
            bars[series] = (round(panel_height - height, 2), round(height, 2))
        duration_y = None
        if run.duration_s is not None:
            duration_y = round(
                duration_height - (duration_height * run.duration_s / duration_max if duration_max else 0), 2
            )
            points.append(f"{x + bar / 2:.2f},{duration_y}")
        health = "ok" if run.exit_code == 0 else "warn" if run.exit_code in (1, 5) else "bad"
        marks.append(RunMark(run, round(x, 2), round(bar, 2), bars, duration_y, health))
    return Chart(
        width=width,
        panel_height=panel_height,
        panels=tuple((series, title, maxima[series]) for series, title in _PANELS),
        marks=marks,
        duration_height=duration_height,
        duration_max=duration_max,
        duration_points=" ".join(points),
    )


# --- formatting -----------------------------------------------------------------------------------------------


def human_bytes(n: int | None) -> str:
    """``1536`` -> ``1.5 KiB``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _parse(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    try:
        parsed = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _when(stamp: str | None) -> str:
    """An ISO timestamp as ``2024-10-17 10:48 UTC``; other text unchanged."""
    parsed = _parse(stamp)
    if parsed is None:
        return stamp or "-"
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _older(stamp: str | None, now: datetime, limit: timedelta) -> bool:
    parsed = _parse(stamp)
    return parsed is None or now - parsed > limit


def _age(stamp: str | None, now: datetime) -> str:
    """How long ago, roughly: ``5 min``, ``3 h 20 min``, ``4 d 2 h``."""
    parsed = _parse(stamp)
    if parsed is None:
        return "unknown"
    seconds = max(int((now - parsed).total_seconds()), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days} d {hours} h ago"
    if hours:
        return f"{hours} h {minutes} min ago"
    return f"{minutes} min ago" if minutes else "just now"
