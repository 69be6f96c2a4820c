"""The whole catalog's listings: ``catalog.catalog.list``, ``catalog.product.list`` and its sku, offer and
service variants, ``catalog.productProperty.list``: rows of items with their pictures, filtered, ordered and
paged by :mod:`.listing` (the documented keyset page from an id index).

The behaviour is described in the package docstring (:mod:`imgsync.emulator`), "The whole catalog".
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import listing
from .answers import ApiError
from .catalog import (
    EMPTY_SKU,
    FREE_OFFER,
    MORE_PHOTO_PROPERTY_ID,
    OFFER,
    OFFER_IBLOCK_ID,
    PRODUCT_IBLOCK_ID,
    SERVICE,
    SKU,
    SKU_PROPERTY_ID,
    CatalogItem,
)

if TYPE_CHECKING:
    from .oauth import Cred
    from .state import Stored

__all__ = ["Products"]

_ITEM_FIELDS = ("id", "iblockId", "type", "name", "active", "available", "code", "xmlId", "parentId")
_CATALOG_FIELDS = ("id", "iblockId", "iblockTypeId", "lid", "name", "productIblockId", "skuPropertyId")
_PROPERTY_FIELDS = (
    "id",
    "iblockId",
    "code",
    "name",
    "propertyType",
    "multiple",
    "active",
    "userType",
    "xmlId",
)
_PROPERTY_NAME = re.compile(r"property\d+")


def _catalog_rows() -> list[dict[str, Any]]:
    common = {"iblockTypeId": "CRM_PRODUCT_CATALOG", "lid": "s1", "subscription": "N", "vatId": None}
    return [
        {
            **common,
            "iblockId": PRODUCT_IBLOCK_ID,
            "id": PRODUCT_IBLOCK_ID,
            "name": "CRM product catalog",
            "productIblockId": None,
            "skuPropertyId": None,
        },
        {
            **common,
            "iblockId": OFFER_IBLOCK_ID,
            "id": OFFER_IBLOCK_ID,
            "name": "CRM product catalog (offers)",
            "productIblockId": PRODUCT_IBLOCK_ID,
            "skuPropertyId": SKU_PROPERTY_ID,
        },
    ]


def _property_rows() -> list[dict[str, Any]]:
    def prop(
        pid: int, iblock: int, code: str, name: str, kind: str, multiple: str, **extra: Any
    ) -> dict[str, Any]:
        return {
            "active": "Y",
            "code": code,
            "defaultValue": None,
            "fileType": "",
            "iblockId": iblock,
            "id": pid,
            "isRequired": "N",
            "linkIblockId": None,
            "multiple": multiple,
            "name": name,
            "propertyType": kind,
            "sort": 500,
            "timestampX": "2024-05-27T10:00:00+02:00",
            "userType": None,
            "xmlId": code,
            **extra,
        }

    files = "jpg, gif, bmp, png, jpeg, webp"
    rows = [
        prop(pid, iblock, "MORE_PHOTO", "Images", "F", "Y", fileType=files)
        for iblock, pid in MORE_PHOTO_PROPERTY_ID.items()
    ]
    rows.append(
        prop(
            SKU_PROPERTY_ID,
            OFFER_IBLOCK_ID,
            "CML2_LINK",
            "Product",
            "E",
            "N",
            linkIblockId=PRODUCT_IBLOCK_ID,
            userType="SKU",
        )
    )
    return sorted(rows, key=lambda row: row["id"])


class Products:
    """The item listings over the catalog state; ``admin`` gates the admin-only ones."""

    admin: bool
    listing_ids_match: bool
    delete_once_listed: set[int]
    hidden_catalogs: set[int]
    empty_catalogs: set[int]
    _state_lock: threading.Lock
    _products: dict[int, dict[int, Stored]]
    _items: dict[int, CatalogItem]
    _item_index: dict[int, list[int]] | None

    if TYPE_CHECKING:

        def delete_item(self, item_id: int) -> None: ...

    def _m_catalogs(self, params: dict[str, Any], cred: Cred) -> tuple[Any, int | None, int | None]:
        self._require_admin()
        query = self._query(params, _CATALOG_FIELDS)
        shown = [row for row in _catalog_rows() if row["iblockId"] not in self.hidden_catalogs]
        rows, total, following = listing.page(shown, query)
        return {"catalogs": [query.project(row) for row in rows]}, total, following

    def _m_properties(self, params: dict[str, Any], cred: Cred) -> tuple[Any, int | None, int | None]:
        query = self._query(params, _PROPERTY_FIELDS)
        rows, total, following = listing.page(_property_rows(), query)
        return {"productProperties": [query.project(row) for row in rows]}, total, following

    def _m_products(self, params: dict[str, Any], cred: Cred) -> tuple[Any, int | None, int | None]:
        return self._list_items(params, "products", None)

    def _m_skus(self, params: dict[str, Any], cred: Cred) -> tuple[Any, int | None, int | None]:
        self._require_admin()
        return self._list_items(params, "units", (SKU, EMPTY_SKU))

    def _m_offers(self, params: dict[str, Any], cred: Cred) -> tuple[Any, int | None, int | None]:
        self._require_admin()
        return self._list_items(params, "offers", (OFFER, FREE_OFFER))

    def _m_services(self, params: dict[str, Any], cred: Cred) -> tuple[Any, int | None, int | None]:
        self._require_admin()
        return self._list_items(params, "services", (SERVICE,))

    def _require_admin(self) -> None:
        if not self.admin:
            raise ApiError(400, 200040300010, "Access Denied")

    @staticmethod
    def _query(params: dict[str, Any], fields: Iterable[str], require: bool = False) -> listing.ListQuery:
        try:
            return listing.ListQuery.parse(
                params, fields, require=require, is_field=lambda n: bool(_PROPERTY_NAME.fullmatch(n))
            )
        except listing.ListError as exc:
            raise ApiError(400, 0, str(exc)) from None

    def _list_items(
        self, params: dict[str, Any], key: str, types: tuple[int, ...] | None
    ) -> tuple[Any, int | None, int | None]:
        query = self._query(params, _ITEM_FIELDS, require=True)
        with self._state_lock:
            keyset = self._keyset_page(query) if types is None else None
            if keyset is None:
                rows = [
                    self._item_row(item)
                    for item in self._items.values()
                    if (types is None or item.type in types) and item.iblock_id not in self.empty_catalogs
                ]
        found, total, following = keyset if keyset is not None else listing.page(rows, query)
        with self._state_lock:
            pictured = [self._with_pictures(row) for row in found if row["id"] in self._items]
        for row in pictured:
            if row["id"] in self.delete_once_listed:
                self.delete_once_listed.discard(row["id"])
                self.delete_item(row["id"])
        return {key: [query.project(row) for row in pictured]}, total, following

    def _keyset_page(
        self, query: listing.ListQuery
    ) -> tuple[list[dict[str, Any]], int | None, int | None] | None:
        """The page of the documented fast listing (``filter[iblockId]``, optionally ``filter[>id]``, ordered by
        id ascending) from the id index, as :func:`listing.page` would cut it; None for any other query.
        State lock held."""
        if query.order != (("id", False),):
            return None
        iblock = after = None
        for condition in query.conditions:
            value = listing._coerce(condition.value, 0)
            if value is None or isinstance(condition.value, list | dict):
                return None
            if (condition.field, condition.op) == ("iblockId", "=") and iblock is None:
                iblock = value
            elif (condition.field, condition.op) == ("id", ">") and after is None:
                after = value
            else:
                return None
        if iblock is None:
            return None
        if self._item_index is None:
            index: dict[int, list[int]] = {}
            for item_id in sorted(self._items):
                index.setdefault(self._items[item_id].iblock_id, []).append(item_id)
            self._item_index = index
        ids = [] if iblock in self.empty_catalogs else self._item_index.get(iblock, [])
        at = bisect.bisect_right(ids, after) if after is not None else 0
        if query.start < 0:
            chosen, total, following = ids[at : at + listing.PAGE], None, None
        else:
            chosen = ids[at + query.start : at + query.start + listing.PAGE]
            total = len(ids) - at
            following = query.start + listing.PAGE if query.start + listing.PAGE < total else None
        return [self._item_row(self._items[i]) for i in chosen], total, following

    def _item_row(self, item: CatalogItem) -> dict[str, Any]:
        """An item's fields but its pictures (enough to filter and order). Call with the state lock held."""
        row: dict[str, Any] = {
            "active": "Y",
            "available": "Y",
            "code": f"item-{item.id}" if item.code is None else item.code,
            "iblockId": item.iblock_id,
            "id": item.id,
            "name": item.name,
            "type": item.type,
            "xmlId": str(item.id) if item.xml_id is None else item.xml_id,
        }
        if item.type in (OFFER, FREE_OFFER):
            parent = item.parent_id
            row["parentId"] = {"value": str(parent), "valueId": str(900000 + item.id)} if parent else None
        return row

    def _with_pictures(self, row: dict[str, Any]) -> dict[str, Any]:
        """``detailPicture``, ``previewPicture`` and the MORE_PHOTO ``property<N>``. State lock held.

        The lowest-id picture of each type fills ``detailPicture`` / ``previewPicture``; every other
        picture (MORE_PHOTO, and extra DETAIL/PREVIEW ones that make_catalog's alternation makes) is a
        value of the MORE_PHOTO property, so the listing names exactly the item's images.
        """
        item_id = row["id"]
        detail = preview = None
        more = []
        for _, stored in sorted(self._products.get(item_id, {}).items()):
            kind = stored.image.type
            if kind == "DETAIL_PICTURE" and detail is None:
                detail = stored
            elif kind == "PREVIEW_PICTURE" and preview is None:
                preview = stored
            else:
                more.append(stored)
        prop = f"property{MORE_PHOTO_PROPERTY_ID.get(row['iblockId'], MORE_PHOTO_PROPERTY_ID[PRODUCT_IBLOCK_ID])}"
        row["detailPicture"] = self._picture(detail, item_id, "detailPicture")
        row["previewPicture"] = self._picture(preview, item_id, "previewPicture")
        row[prop] = [
            {"valueId": str(500000 + stored.file_id), "value": self._picture(stored, item_id, prop)}
            for stored in more
        ]
        return dict(sorted(row.items()))

    def _picture(self, stored: Stored | None, item_id: int, field_name: str) -> dict[str, str] | None:
        if stored is None:
            return None
        file_id = stored.image.image_id if self.listing_ids_match else stored.file_id
        url = (
            f"/rest/catalog.product.download?fields%5BfieldName%5D={field_name}"
            f"&fields%5BfileId%5D={file_id}&fields%5BproductId%5D={item_id}"
        )
        return {"id": str(file_id), "url": url, "urlMachine": url}
