"""``catalog.productImage.*``: ``get`` and ``list`` (with the other readings of :mod:`.readings`), and the
``add`` and ``delete`` handlers, which :mod:`.writes` implements.

The behaviour is described in the package docstring (:mod:`imgsync.emulator`), "Results".
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from . import readings
from .answers import ApiError, int_param, select_param

if TYPE_CHECKING:
    from .oauth import Cred
    from .state import Stored
    from .writes import ImageWrites

__all__ = ["Images"]


class Images:
    """A product's images as the ``catalog.productImage.*`` methods answer them."""

    image_page_size: int | None
    image_list_cap: int | None
    image_list_ignore_start: bool
    answered_ids: dict[tuple[int, int], Any]
    _state_lock: threading.Lock
    _products: dict[int, dict[int, Stored]]
    _denied: set[int]
    _failing: set[tuple[int, int]]
    _writes: ImageWrites

    if TYPE_CHECKING:

        def _link(self, file_id: int, cred: Cred) -> str: ...

    def _lookup(self, product_id: int) -> dict[int, Stored]:
        """The product's images; raises the catalog errors. Call with the state lock held."""
        if product_id in self._denied:
            raise ApiError(400, 200040300010, "Access Denied")
        product = self._products.get(product_id)
        if product is None:
            raise ApiError(400, 0, "Product is not found")
        return product

    def _m_get(self, params: dict[str, Any], cred: Cred) -> tuple[Any, None]:
        product_id = int_param(params, "productId")
        image_id = int_param(params, "id")
        with self._state_lock:
            stored = self._lookup(product_id).get(image_id)
            failing = (product_id, image_id) in self._failing
        if stored is None:
            raise ApiError(400, 0, "Image is not found")
        if failing:
            raise ApiError(400, 0, "Internal error")
        return {"productImage": self._image_json(stored, cred, None)}, None

    def _m_list(self, params: dict[str, Any], cred: Cred) -> tuple[Any, int | None, int | None]:
        product_id = int_param(params, "productId")
        select = select_param(params)
        with self._state_lock:
            found = sorted(self._lookup(product_id).items())
        found, total, following = readings.image_page(
            found, params, self.image_page_size, self.image_list_cap, self.image_list_ignore_start
        )
        images = [self._image_json(stored, cred, select) for _, stored in found]
        return {"productImages": images}, total, following

    def _m_add(self, params: dict[str, Any], cred: Cred) -> tuple[Any, None]:
        return self._writes.add(params, cred)

    def _m_delete(self, params: dict[str, Any], cred: Cred) -> tuple[Any, None]:
        return self._writes.delete(params, cred)

    def _image_json(self, stored: Stored, cred: Cred, select: set[str] | None) -> dict[str, Any]:
        image = stored.image
        data: dict[str, Any] = {
            "createTime": image.create_time,
            "detailUrl": image.detail_url,
            "downloadUrl": None,
            "id": self.answered_ids.get((image.product_id, image.image_id), image.image_id),
            "name": image.name,
            "productId": image.product_id,
            "type": image.type,
        }
        if select is not None:
            data = {key: value for key, value in data.items() if key in select}
        if "downloadUrl" in data:
            data["downloadUrl"] = self._link(stored.file_id, cred)
        return data
