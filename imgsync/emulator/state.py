"""The portal's catalog: items, their images and the stored files, and the helpers tests call to change it
(:meth:`CatalogState.add_image`, :meth:`~CatalogState.delete_image`, :meth:`~CatalogState.add_picture`, ...).

Every read and write holds the state lock, never while sleeping or doing I/O. The REST methods read this
state (:mod:`.images`, :mod:`.products`, :mod:`.writes`); the behaviour is described in the package
docstring (:mod:`imgsync.emulator`), "The whole catalog".
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .catalog import CatalogImage, CatalogItem, content_type_for, random_detail_url

if TYPE_CHECKING:
    from .writes import ImageWrites

__all__ = ["FIRST_FILE_ID", "CatalogState", "Stored"]

FIRST_FILE_ID = 7001


@dataclass(slots=True)
class Stored:
    image: CatalogImage
    file_id: int


class CatalogState:
    """Items, images and files of one portal; denied products and failing images."""

    _writes: ImageWrites

    def _init_state(self) -> None:
        # Catalog, tokens and used links; never held while sleeping or doing I/O.
        self._state_lock = threading.Lock()
        self._products: dict[int, dict[int, Stored]] = {}
        self._items: dict[int, CatalogItem] = {}
        #: Item ids per iblock, ascending (``_id_index``), rebuilt after items change: a keyset page of a large
        #: catalog costs a bisect, not a scan of every item (a listing of 10^6 items would never end).
        self._item_index: dict[int, list[int]] | None = None
        self._files: dict[int, Stored] = {}
        self._file_ids = itertools.count(FIRST_FILE_ID)
        self._denied: set[int] = set()
        self._failing: set[tuple[int, int]] = set()

    def _put_item(self, item: CatalogItem) -> None:
        self._items[item.id] = item
        self._item_index = None
        self._products.setdefault(item.id, {})

    def _insert(self, image: CatalogImage) -> CatalogImage:
        if image.product_id not in self._items:  # an image of an unknown item: a simple product
            self._put_item(CatalogItem(image.product_id))
        product = self._products[image.product_id]
        if image.image_id in product:
            raise ValueError(f"image {image.product_id}:{image.image_id} already exists")
        stored = Stored(image, next(self._file_ids))
        self._writes.note_id(image.image_id)
        product[image.image_id] = stored
        self._files[stored.file_id] = stored
        return image

    def add_image(self, image: CatalogImage | None = None, /, **fields: Any) -> CatalogImage:
        """Add an image, given whole or as ``CatalogImage`` keyword arguments.

        With keywords, ``product_id`` is required; ``image_id`` defaults to the highest id + 1 and
        ``name`` to ``photo-<id>.jpg``.
        """
        if image is not None and fields:
            raise TypeError("give a CatalogImage or keyword arguments, not both")
        with self._state_lock:
            if image is None:
                if "image_id" not in fields:
                    fields["image_id"] = self._writes.next_image_id()
                fields.setdefault("name", f"photo-{fields['image_id']}.jpg")
                image = CatalogImage(**fields)
            return self._insert(image)

    def add_product(self, product_id: int) -> None:
        """Make a product exist, with no images (``list`` then answers ``total: 0``)."""
        with self._state_lock:
            if product_id not in self._items:
                self._put_item(CatalogItem(product_id))

    def add_item(self, item: CatalogItem | None = None, /, **fields: Any) -> CatalogItem:
        """Add (or replace) a catalog item, given whole or as ``CatalogItem`` keyword arguments; its
        images stay. ``id`` defaults to the highest item id + 1."""
        with self._state_lock:
            if item is None:
                fields.setdefault("id", max(self._items, default=99) + 1)
                item = CatalogItem(**fields)
            self._put_item(item)
            return item

    def delete_item(self, item_id: int) -> None:
        """Remove an item and its images (the same as :meth:`delete_product`)."""
        self.delete_product(item_id)

    def items(self) -> list[CatalogItem]:
        """Every catalog item, by id."""
        with self._state_lock:
            return [self._items[i] for i in sorted(self._items)]

    def add_picture(
        self, item_id: int, type: str = "MORE_PHOTO", content: bytes = b"", name: str | None = None
    ) -> CatalogImage:
        """Give an item a new picture (a new image id, the highest + 1). ``type`` ``DETAIL_PICTURE`` or
        ``PREVIEW_PICTURE`` replaces the item's picture of that type, as the product card does."""
        with self._state_lock:
            if item_id not in self._items:
                raise KeyError(item_id)
            if type in ("DETAIL_PICTURE", "PREVIEW_PICTURE"):
                for old in [s for s in self._products[item_id].values() if s.image.type == type]:
                    self._remove(item_id, old.image.image_id)
        fields: dict[str, Any] = {"product_id": item_id, "type": type, "content": content}
        if name:
            fields["name"] = name
        return self.add_image(**fields)

    def replace_picture(
        self, item_id: int, image_id: int, content: bytes, name: str | None = None
    ) -> CatalogImage:
        """A new picture in place of an old one: there is no ``catalog.productImage.update``, so the new
        picture is a new image (new id, same type); the old id is gone."""
        with self._state_lock:
            old = self._products[item_id][image_id].image
            self._remove(item_id, image_id)
        return self.add_image(product_id=item_id, type=old.type, content=content, name=name or old.name)

    def delete_picture(self, item_id: int, image_id: int) -> None:
        """Remove a picture (the same as :meth:`delete_image`)."""
        self.delete_image(item_id, image_id)

    def _remove(self, product_id: int, image_id: int) -> None:
        stored = self._products[product_id].pop(image_id)
        del self._files[stored.file_id]

    def replace_image(
        self, product_id: int, image_id: int, content: bytes, name: str | None = None
    ) -> CatalogImage:
        """Store a new file for an image: new content (and name), a new ``detailUrl``, same ``createTime``.

        Links issued for the old file answer 404 from now on.
        """
        with self._state_lock:
            old = self._products[product_id][image_id]
            new_name = name or old.image.name
            image = replace(
                old.image,
                content=content,
                name=new_name,
                content_type=content_type_for(new_name),
                detail_url=random_detail_url(new_name),
            )
            del self._files[old.file_id]
            del self._products[product_id][image_id]
            return self._insert(image)

    def delete_image(self, product_id: int, image_id: int) -> None:
        """Remove an image; the product stays (possibly with no images)."""
        with self._state_lock:
            stored = self._products[product_id].pop(image_id)
            del self._files[stored.file_id]

    def delete_product(self, product_id: int) -> None:
        """Remove a product (any catalog item) and all its images."""
        with self._state_lock:
            for stored in self._products.pop(product_id).values():
                del self._files[stored.file_id]
            self._items.pop(product_id, None)
            self._item_index = None

    def deny_product(self, product_id: int, denied: bool = True) -> None:
        """Every call about that product answers ``200040300010 Access Denied`` (downloads: 403)."""
        with self._state_lock:
            (self._denied.add if denied else self._denied.discard)(product_id)

    def fail_image(self, product_id: int, image_id: int, failing: bool = True) -> None:
        """``catalog.productImage.get`` for that image answers 400 ``{"error": 0, "Internal error"}``."""
        with self._state_lock:
            (self._failing.add if failing else self._failing.discard)((product_id, image_id))

    def image(self, product_id: int, image_id: int) -> CatalogImage:
        with self._state_lock:
            return self._products[product_id][image_id].image

    def gallery(self, product_id: int) -> list[tuple[int, str, str]]:
        """``(image id, type, sha256 of the stored bytes)`` of each image of a product, by id (``[]`` for
        an unknown product): what tests assert on, e.g. that no bytes were added twice."""
        return self._writes.gallery(product_id)

    def images(self) -> list[CatalogImage]:
        """Every image, ordered by (product id, image id)."""
        with self._state_lock:
            found = [s.image for product in self._products.values() for s in product.values()]
        return sorted(found, key=lambda i: (i.product_id, i.image_id))
