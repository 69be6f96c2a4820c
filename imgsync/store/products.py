"""The ``products`` table: what ``sync --all`` lists (imgsync/catalog.py lists, the pipeline calls these):
each item as the listing showed it, and whether the last complete listing still had it (``gone``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from ..models import ListedItem, ProductKeys
from .db import StoreBase


class Products(StoreBase):
    """The listing's record of the catalog."""

    def save_listed(self, items: Iterable[ListedItem], now: str) -> int:
        """Record listed items in one transaction: new rows, or rows updated to what the listing showed,
        ``listed`` again (a gone item that is listed again comes back). Returns the number of items.

        Pass the same ``now`` for every page of one listing, and that value to :meth:`mark_gone_items`."""
        rows = [
            (
                item.id,
                item.iblock_id,
                item.type,
                item.parent_id,
                ",".join(str(i) for i in sorted(item.picture_ids)),
                now,
                now,
                item.xml_id,
                item.code,
                item.name,
            )
            for item in items
        ]
        # The keys (xml_id, code, name) are kept as listed; a listing that did not ask for them (None)
        # leaves what an earlier one recorded.
        with self._writing() as conn:
            conn.executemany(
                "insert into products (product_id, iblock_id, type, parent_id, picture_ids, status, "
                "first_listed_at, last_listed_at, xml_id, code, name) "
                "values (?, ?, ?, ?, ?, 'listed', ?, ?, ?, ?, ?) "
                "on conflict(product_id) do update set iblock_id = excluded.iblock_id, type = excluded.type, "
                "parent_id = excluded.parent_id, picture_ids = excluded.picture_ids, status = 'listed', "
                "last_listed_at = excluded.last_listed_at, gone_at = null, "
                "xml_id = coalesce(excluded.xml_id, xml_id), code = coalesce(excluded.code, code), "
                "name = coalesce(excluded.name, name)",
                rows,
            )
        return len(rows)

    def product_keys(self, product_ids: Sequence[int]) -> dict[int, ProductKeys]:
        """The listing's keys of these items (``restore --match`` on another portal); items the ``products``
        table does not hold are left out. A key is None when no listing recorded it (an older ``sync --all``)."""
        out: dict[int, ProductKeys] = {}
        ids = list(dict.fromkeys(product_ids))
        with self._lock:
            if "products" not in self.db.table_names():
                return out
            for at in range(0, len(ids), 500):
                chunk = ids[at : at + 500]
                for pid, xml_id, code, name, status in self.db.execute(
                    f"select product_id, xml_id, code, name, status from products where product_id in "
                    f"({', '.join('?' * len(chunk))})",
                    chunk,
                ):
                    out[int(pid)] = ProductKeys(int(pid), xml_id, code, name, str(status or ""))
        return out

    def recorded_pictures(self, item_ids: Sequence[int]) -> dict[int, set[int]]:
        """The image ids recorded with status ``ok`` per item (items without one are left out)."""
        out: dict[int, set[int]] = {}
        ids = list(dict.fromkeys(item_ids))
        with self._lock:
            for at in range(0, len(ids), 500):
                chunk = ids[at : at + 500]
                rows = self.db.execute(
                    f"select product_id, image_id from images where status = 'ok' and product_id in "
                    f"({', '.join('?' * len(chunk))})",
                    chunk,
                )
                for product_id, image_id in rows.fetchall():
                    out.setdefault(product_id, set()).add(image_id)
        return out

    def mark_gone_items(self, seen_since: str, now: str) -> int:
        """After a COMPLETE listing that began at ``seen_since``: mark ``gone`` (``gone_at = now``) every
        listed item it did not show. Never call it after an incomplete listing. Returns how many.

        Committed on its own, before the items' images are marked missing: :meth:`iter_gone_items` finds the
        gone items whose images a stopped run had not marked yet, so the next complete listing finishes them."""
        with self._writing() as conn:
            cursor = conn.execute(
                "update products set status = 'gone', gone_at = ? where status = 'listed' and last_listed_at < ?",
                [now, seen_since],
            )
        return cursor.rowcount

    def iter_gone_items(self, size: int = 500) -> Iterator[list[int]]:
        """The ids of ``gone`` items that still have an image not recorded ``missing``, ``size`` at a time:
        those marked by this listing, and any an earlier run marked gone but was stopped (killed) before
        it had marked their images. The lock is not held between chunks, so the caller may write meanwhile."""
        last = 0
        while True:
            with self._lock:
                rows = self.db.execute(
                    "select product_id from products p where status = 'gone' and product_id > ? and exists "
                    "(select 1 from images i where i.product_id = p.product_id and i.status != 'missing') "
                    "order by product_id limit ?",
                    [last, size],
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [row[0] for row in rows]

    def listed_catalogs(self) -> dict[int, int]:
        """``{iblock_id: items}`` of the items the listings so far show as ``listed``: the catalogs a new
        listing must find again before it may call anything gone."""
        with self._lock:
            rows = self.db.execute(
                "select iblock_id, count(*) from products where status = 'listed' and iblock_id is not null "
                "group by iblock_id"
            ).fetchall()
        return {int(iblock): int(n) for iblock, n in rows}

    def listed_items(self) -> int:
        """Items the last complete listing showed (``status = 'listed'``); ``catalog_size`` counts gone ones too."""
        with self._lock:
            return int(self.db.execute("select count(*) from products where status = 'listed'").fetchone()[0])

    def catalog_size(self) -> int | None:
        """Items in the ``products`` table that ``sync --all`` fills; ``None`` without such a table or rows."""
        with self._lock:
            if "products" not in self.db.table_names():
                return None
            n = int(self.db.execute("select count(*) from products").fetchone()[0])
        return n or None
