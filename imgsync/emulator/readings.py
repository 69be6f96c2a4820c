"""Other readings of the docs' open points (``bitrix24-api-notes.md`` §13) for ``catalog.productImage.list``.

Pure paging over a product's images, sorted by id; :mod:`.images` passes the portal's switches in. The
other open points have their switches on the portal itself (``listing_ids_match``,
``rotate_refresh_tokens``, ``link_ttl``, ``one_time_links``); the package docstring lists them all.
"""

from __future__ import annotations

from typing import Any, TypeVar

from .listing import PAGE

__all__ = ["image_page"]

T = TypeVar("T")


def image_page(
    found: list[T],
    params: dict[str, Any],
    page_size: int | None,
    cap: int | None = None,
    ignore_start: bool = False,
) -> tuple[list[T], int | None, int | None]:
    """The images one ``list`` call shows: ``(images, total, next)``.

    - ``cap``: only the first ``cap`` images exist for ``list`` (``total`` = those shown, no ``next``).
    - ``page_size``: pages of that many, ``start`` as for other lists, ``next`` when more follow,
      ``start=-1`` without ``total``; None: every image on one page.
    - ``ignore_start``: pages (of ``page_size``, else 50), but ``start`` is read as 0 whatever was sent:
      every call answers the first page again, with ``next`` = the page size when more follow (a client
      that follows ``next`` blindly loops for ever).
    """
    if cap is not None:
        found = found[: max(cap, 0)]
    size = page_size or (PAGE if ignore_start else None)
    if not size:
        return found, len(found), None
    try:
        start = int(params.get("start") or 0)
    except (TypeError, ValueError):
        start = 0
    if start < 0:
        return found[:size], None, None
    if ignore_start:  # start read as 0 whatever was sent, so next is always the second page's start
        return found[:size], len(found), size if size < len(found) else None
    following = start + size if start + size < len(found) else None
    return found[start : start + size], len(found), following
