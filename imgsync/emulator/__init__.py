"""A Bitrix24 portal emulator for the demo, the tests and the benchmark.

A real threaded HTTP/1.1 server on 127.0.0.1 (keep-alive, exact Content-Length) that follows the REST
docs summarised in ``bitrix24-api-notes.md``::

    from imgsync.emulator import Portal, Faults, make_catalog, make_store_catalog

    with Portal(make_catalog(products=10, images_per_product=3), rate_limit=2.0, burst=50) as portal:
        portal.webhook_url        # http://127.0.0.1:PORT/rest/1/k3y5ecr3tw3bh00k/
        access, refresh = portal.issue_tokens()
        portal.faults = Faults(rate_503=0.1, seed=3)

A whole catalog (products, sets, parents with variations, services)::

    items, images = make_store_catalog(100, parents=10, variations_per_parent=3, services=5)
    with Portal(images, items=items, operating_limit=480.0, cost_per_call=0.5) as portal: ...

Run it alone with ``python -m imgsync.emulator --products 100`` (``--parents 10 --services 5`` for a
whole catalog; see ``__main__``).

The code, one concern a module: :mod:`.portal` (:class:`Portal`, the façade: settings, lifecycle, the HTTP
entry) over :mod:`.state` (the catalog and the helpers tests call to change it), :mod:`.faults`
(:class:`Faults`, :class:`Stats`, the gate a request passes first), :mod:`.limits` (the leaky bucket, the
operating-time budget), :mod:`.rest` (the method table, one method run, ``batch``), :mod:`.images`
(``catalog.productImage.*``, with :mod:`.readings` and :mod:`.writes`), :mod:`.products` (the whole catalog's
listings, with :mod:`.listing`), :mod:`.links` (download links and answers) and :mod:`.oauth` (the webhook,
OAuth tokens, the token endpoint); :mod:`.answers` holds :class:`~.answers.ApiError` and the canned answers,
:mod:`.server` the HTTP server, :mod:`.catalog` the sample catalogs, :mod:`.s3` the tests' S3 server.

Sample catalog
--------------
:func:`make_catalog` makes real pictures (Pillow opens and fully loads each): ``photo-<id>.jpg`` for
even ids, ``.png`` for odd ones, ``.webp`` when id % 4 == 3; a gradient with a disc in a hue taken from
the id, 1 to 256 pixels square, padded to a size drawn from ``[min_size, max_size]`` with bytes decoders
skip (JPEG COM segments after the JFIF header, a private ``imGs`` PNG chunk before IEND, an unknown
``IMGS`` chunk of an extended-format WebP) that start with ``imgsync image <id>;``, so every file is
distinct. The same arguments give the same bytes. A file is never smaller than the smallest picture of
its type (a 1x1 picture plus the tag: about 150 bytes for JPEG, 90 for PNG, 70 for WebP), even when
``max_size`` is; an odd-sized WebP keeps one byte after its RIFF container when ``min_size == max_size``.

Endpoints
---------
- ``/rest/{user}/{code}/{method}[.json]`` (webhook) and ``/rest/{method}[.json]`` with ``auth`` in the
  query string or the body (OAuth); GET or POST; parameters from the query string, then a JSON or form
  body on top (PHP bracket syntax: ``select[]=id``). Method names are case-insensitive.
- Methods: ``catalog.productImage.get``, ``catalog.productImage.list``, ``catalog.productImage.add``,
  ``catalog.productImage.delete`` (see "Giving images back"), ``catalog.catalog.list``,
  ``catalog.product.list``, ``catalog.product.sku.list``, ``catalog.product.offer.list``,
  ``catalog.product.service.list``, ``catalog.productProperty.list`` (all scope ``catalog``),
  ``batch``, plus ``scope`` and ``server.time`` (no scope needed). Anything else (also
  ``catalog.product.download``, whose links the listings show): 404 ``ERROR_METHOD_NOT_FOUND``
  "Method not found!".
- ``/rest/download.json?[auth=..&]token=..``: the ``downloadUrl`` of an image.
- ``/oauth/token/``: the OAuth server (refresh grant only).
- Any other path: 404 with nginx's HTML body.

Order of checks for a REST call: (any request: a body over ``max_request_bytes`` -> nginx's 413) -> count
it -> ``overload`` -> injected faults -> leaky bucket -> parse
parameters -> auth -> method exists -> scope -> operation limit, then the time budget -> the method (which
checks ``admin``, then its parameters). Every answer is delayed by
``latency`` seconds (slept in the connection's thread, no lock held); the OAuth endpoint is not.

Errors (HTTP status, ``error``, ``error_description``)
-------------------------------------------------------
- wrong webhook user/code, or no ``auth`` on ``/rest/{method}``: 401 ``NO_AUTH_FOUND`` "Wrong
  authorization data"; unknown OAuth token: 401 ``invalid_token``; expired one: 401 ``expired_token``
  "The access token provided has expired."; missing scope: 403 ``insufficient_scope``.
- Catalog errors are HTTP 400 with *numeric* codes, as in the docs: 100 (missing or non-integer
  ``productId``/``id``), 0 "Product is not found", 0 "Image is not found", 200040300010 "Access Denied"
  (:meth:`Portal.deny_product`; checked before existence), 0 "Internal error" (:meth:`Portal.fail_image`,
  ``get`` only).
- Leaky bucket: 503 ``QUERY_LIMIT_EXCEEDED`` "Too many requests"; ``portal.overload = True``: 503
  ``OVERLOAD_LIMIT`` for every REST call and download; injected 500: ``INTERNAL_SERVER_ERROR``.
- Malformed JSON body or ``cmd``: 400 ``ERROR_ARGUMENT``. An unexpected exception inside the emulator
  answers 500 ``INTERNAL_SERVER_ERROR`` and its traceback is kept in ``portal.server_errors``.

The leaky bucket
----------------
One counter per portal: each counted request adds 1, it drains ``rate_limit`` per second (continuously),
and a request that finds it already ``>= burst`` is answered 503 and not counted. A ``batch`` counts once;
downloads count when ``count_downloads``; OAuth, overload answers and injected faults never count. So from
empty, exactly ``burst`` requests pass when ``rate_limit=0``; with any drain the counter sits a hair under
``burst`` after those and one more request passes. A client that keeps its own bucket with the same rule
and numbers is never refused (the server has drained at least as much as the client believes).

Results
-------
- ``get``: ``{"result": {"productImage": {createTime, detailUrl, downloadUrl, id, name, productId,
  type}}, "time": {...}}``. ``list``: ``{"result": {"productImages": [...]}, "total": N, "time": {...}}``,
  every image of the product in id order on one page (``start`` is ignored, no ``next``; the notes §12:
  no cap at 50); ``select`` keeps only the named fields. ``portal.answered_ids[(product_id, image_id)] =
  "12a"`` makes the answers show that ``id`` for the image instead of its number. A product whose images were all deleted still
  exists (``total: 0``). With ``image_page_size=N`` (the docs leave paging open) ``list`` answers pages
  of N: ``start`` as for other lists, ``next`` when more follow, ``start=-1`` without ``total``. Two
  other readings (notes §13.5, see below): ``image_list_cap`` and ``image_list_ignore_start``.
- ``time``: ``start``, ``finish``, ``duration``, ``processing``, ``date_start``, ``date_finish`` (in
  +02:00), ``operating`` and ``operating_reset_at`` (see "Operating time"). A list answer puts ``next``
  (when a further page exists) and ``total`` (unless ``start=-1``) beside ``result``.

The whole catalog
-----------------
Items (:class:`CatalogItem`): ``Portal(images, items=...)``, e.g. from :func:`make_store_catalog`. Without
``items`` every product id among the images is a simple product, so old catalogs list as before; an
image of an unknown item makes it a simple product. Types as the docs number them: simple 1, set 2,
parent 3 (6 without variations), variation 4 (5 without parent), service 7. Two trade catalogs, always:
the product catalog (iblock ``23``: types 1, 2, 3, 6, 7) and the variation catalog (iblock ``25``,
``productIblockId`` 23, ``skuPropertyId`` 97: types 4, 5). Item ids are unique across both.

- ``catalog.catalog.list`` (admin only): ``result.catalogs[]`` with ``id``, ``iblockId``,
  ``iblockTypeId`` ("CRM_PRODUCT_CATALOG"), ``lid`` ("s1"), ``name``, ``productIblockId``,
  ``skuPropertyId``, ``subscription``, ``vatId``; ``total``.
- ``catalog.product.list`` (not admin only): ``select`` must name ``id`` and ``iblockId``, ``filter``
  must name ``iblockId``, else 400 ``{"error": 0, "error_description": "Required select fields: id,
  iblockId"}`` / ``"Required filter fields: iblockId"`` (texts from the notes §12). Every item of the
  named catalog, whatever its type (INFERENCE, notes §12); an ``iblockId`` that is no catalog gives an
  empty list. ``result.products[]`` with ``active``, ``available``, ``code``, ``detailPicture``,
  ``iblockId``, ``id``, ``name``, ``previewPicture``, ``type``, ``xmlId`` (``CatalogItem.xml_id``, by default
  the item's own id, as a portal's default ``XML_ID``), ``code`` (``CatalogItem.code``, by default
  ``item-<id>``), ``property<N>`` (the MORE_PHOTO
  property: 120 in the product catalog, 121 in the variation catalog) and, for variations,
  ``parentId {value, valueId}``; ``select`` keeps the named fields (``*``: all).
- ``catalog.product.sku.list`` -> ``result.units[]`` (types 3, 6), ``catalog.product.offer.list`` ->
  ``result.offers[]`` (4, 5), ``catalog.product.service.list`` -> ``result.services[]`` (7): the same
  parameters and errors, the type filter forced on top of the caller's; admin only. ``Portal(admin=False)``
  (or ``portal.admin = False``) makes the admin-only methods answer 400 ``200040300010`` "Access Denied".
- ``catalog.productProperty.list``: ``result.productProperties[]``: the MORE_PHOTO property of each
  catalog (``propertyType`` "F", ``multiple`` "Y", ``code`` "MORE_PHOTO", ``fileType``, ...) and the
  variation catalog's ``CML2_LINK`` (id 97, "E", ``userType`` "SKU"); no ``iblockId`` filter: both
  catalogs, as the docs say.
- Filters (all lists): prefixes ``= ! != > >= < <=`` on ``id``, ``iblockId``, ``type``, ``name``,
  ``active``, ``available``, ``code``, ``xmlId``, ``parentId`` (catalogs and properties: their own
  fields); an array means IN (``!``: NOT IN). An unknown field (``@id`` too, notes §12) answers 400 code
  0 "Unknown filter field: <key>" (the docs give no text). A filter value that is an empty string drops
  its condition (what an unresolved batch reference becomes). ``order`` by those fields, ``asc``/``desc``,
  default ``id`` ascending. ``start``: pages of 50, ``total``, ``next`` when more; ``start=-1``: neither
  (huge-data.md).
- Pictures: an item's lowest-id ``DETAIL_PICTURE`` image is ``detailPicture``, its lowest-id
  ``PREVIEW_PICTURE`` image ``previewPicture`` (``null`` when none), every other image a value of the
  MORE_PHOTO property, ``[{"valueId": "…", "value": {"id", "url", "urlMachine"}}]`` (``[]`` when none;
  the shape is INFERENCE, notes §12). So a listing names exactly the images ``catalog.productImage.list``
  answers for that item (make_catalog's second ``DETAIL_PICTURE`` lands in MORE_PHOTO). ``id`` is the
  image id as a string (INFERENCE, notes §12); with ``listing_ids_match=False`` it is the stored file's
  id instead (from 7001: other numbers), since the docs leave it open. ``url`` = ``urlMachine`` =
  ``/rest/catalog.product.download?fields[fieldName]=<field>&fields[fileId]=<id>&fields[productId]=<item>``
  (URL-encoded brackets, relative, no auth), as in the docs' examples.
- Changes: :meth:`Portal.add_item`, :meth:`Portal.delete_item`, :meth:`Portal.items`,
  :meth:`Portal.add_picture` (a new image id; a new DETAIL/PREVIEW picture replaces the old one),
  :meth:`Portal.replace_picture` (no ``catalog.productImage.update`` exists, so: a new image id, the old
  one gone), :meth:`Portal.delete_picture`; listings and ``catalog.productImage.*`` stay consistent.
  ``portal.delete_once_listed`` (a set of item ids): each is deleted right after a
  ``catalog.product.list`` page has shown it, as an item deleted between the listing and its image list.
  ``portal.hidden_catalogs`` (iblock ids): ``catalog.catalog.list`` leaves them out, as if removed (all
  of them: ``[]``); ``portal.empty_catalogs`` (iblock ids): the item listings show none of their items.

``batch``
---------
``{"halt": 0|1, "cmd": {key: "method?query"} | ["method?query", ...]}``; each query is parsed PHP-style.
More than 50 commands: 400 ``ERROR_BATCH_LENGTH_EXCEEDED`` for the whole call (nothing runs). A nested
``batch`` or a download inside: that command's error ``ERROR_BATCH_METHOD_NOT_ALLOWED``. The answer is
always 200 once auth and the bucket let it in: ``{"result": {"result", "result_error", "result_total",
"result_next", "result_time"}, "time"}``. Sections follow PHP's ``json_encode``: an **empty section is
``[]``**, and a section whose keys are exactly ``"0".."n-1"`` (a list ``cmd``, or a dict with those keys)
is a **JSON list** too; other keys give an object. ``result_time`` holds successful commands only (each
with that command's own method's ``operating`` and ``operating_reset_at``), ``result_total`` the list
commands that had a ``total``, ``result_next`` those with a next page. ``halt=1`` stops at the first
failing command; later ones are absent.

References (batch.md): a parameter value ``$result[key][a][b]...`` is replaced, before the command
runs, by that part of an earlier command's result (``filter[>id]=$result[p0][products][49][id]``); a
value made of a reference alone keeps the result's type, a reference inside text becomes text. A
reference to nothing (a later command, a failed one, an index past a short page) becomes an empty
string, and an empty filter value drops its condition: the page reads from the start again. What a real
portal does there is UNCONFIRMED (notes §12: "likely re-reads from the start"); a client must stop a
chain at its first short page.

Operating time
--------------
Each executed call (direct or in a batch; the outer batch is not counted) adds its processing time plus
``method_cost.get(method, cost_per_call)`` seconds to its method's counter (per portal, not per
credential). The counter is kept in ten baskets over ``operating_window`` (default 600 s, limits.md):
a basket starts with the first call after the previous basket's ``window / 10`` has passed and drops
out ``operating_window`` after its start. ``time.operating`` is the sum of the live baskets,
``time.operating_reset_at`` the (ceiled) time the oldest drops out. With ``operating_limit`` (seconds,
default None: no limit; the docs' example uses 480) a method whose counter *exceeds* the limit before a
call is blocked: the call that takes it over still runs, the next is refused (limits.md) until enough
baskets drop out, with ``operating_reset_at`` = the oldest basket's end. So a client that watches
``time.operating`` and waits for ``operating_reset_at`` is never refused; one that does not, is.
Refusals (budget or :meth:`Portal.operation_limit`) are counted in ``stats.rejected_429``.

Operation limit
---------------
:meth:`Portal.operation_limit` blocks a method for some seconds (``stats.injected["operation_limit"]``);
the budget above refuses in the same shape. A direct call answers **429**
``{"error": "OPERATION_TIME_LIMIT", "error_description": "Method is blocked due to operation time
limit.", "operating_reset_at": <unix time>}``. Inside ``batch`` every command of that method gets that
same object in ``result_error`` (the docs: nested calls are checked one by one against their own method's
limit; the batch itself is 200), and the batch's top-level ``time.operating_reset_at`` is the time the
block lifts. The ``operating_reset_at`` key inside the error body is an emulator extra (the docs do not
show the 429 body); a client may use it but must cope without it.

Download links
--------------
``{url}/rest/download.json?auth=<access token>&token=catalog|<b64("id=<file id>&_=<nonce>")>|
<b64("download|catalog|<b64>|<issued>")>.<HMAC>`` (the ``|`` URL-encoded); for a webhook the same without
``auth=``. The file id is a per-file counter (from 7001), not the image id. A fresh nonce per call, so
the URL differs every time. The HMAC (a per-portal random secret) covers the file id and nonce, the issue
time and the credential (the access token, or the webhook user and code), so a link only works with the
credential it was issued for. A GET checks, in order:

- the bucket, faults and overload as for REST (faults when ``apply_to`` is "all" or "download");
- malformed token or wrong signature: 401 ``{"error": "LINK_CHECK_FAILED", "error_description": "Link
  check failed"}``. (The mirrored PHP core throws ``ACCESS_DENIED`` with 403 here; that code collides with
  the fatal "REST only on commercial plans" error, so the emulator uses its own code.)
- OAuth link whose token expired: 401 ``expired_token`` (the link lives as long as its token); unknown
  token: 401 ``invalid_token``;
- older than ``link_ttl``: 401 ``{"error": "LINK_EXPIRED", "error_description": "Link check failed: the
  link has expired"}``;
- file deleted or replaced since: 404 ``{"error": "ERROR_FILE_NOT_FOUND", "error_description": "File is
  not found"}``; product denied: 403 ``200040300010`` "Access Denied";
- ``Referer`` or ``Accept-Language`` missing, or ``User-Agent`` empty: 404 with nginx's HTML body *and*
  ``Content-Disposition`` (the symptom the docs describe); the link is not used up;
- with ``one_time_links``, a link already served: 401 ``{"error": "LINK_USED", "error_description":
  "Link check failed: the link was already used"}``.

Success: 200, ``Content-Type`` from the extension, ``Content-Length``, ``Content-Disposition: attachment;
filename="..."``, the body written in 64 KiB slices of the stored bytes (no copies). ``truncate_rate``
sends the full Content-Length, half the body, then closes; ``slow_download`` spreads that many seconds
over the body (in at least ten pieces). ``detailUrl`` paths are not served (404).

OAuth server
------------
``GET|POST /oauth/token/?grant_type=refresh_token&client_id=..&client_secret=..&refresh_token=..`` ->
200 ``{access_token, client_endpoint: "<url>/rest/", domain, expires, expires_in, member_id,
refresh_token, scope, server_endpoint, status, user_id}``. Wrong client: 401 ``invalid_client``; another
grant type: 400 ``invalid_request``; unknown or (with ``rotate_refresh_tokens``) already used refresh
token: 400 ``invalid_grant``. Old access tokens stay valid until they expire.

Faults and drops
----------------
A drop closes the socket (shutdown + close) without a byte of answer. Injected 503s are counted in
``stats.injected``, not in ``stats.rejected_503``. ``portal.stop()`` also cuts kept-alive connections.

Web-tier faults (:class:`Faults`, all off by default; each counted in ``stats.injected`` by kind; a
faulted request never enters the leaky bucket). They stand for the proxies and login pages between a
client and a real portal; the docs describe none of them, so their shapes are the emulator's:

- ``rate_502`` / ``rate_504``: nginx's HTML ``502 Bad Gateway`` / ``504 Gateway Time-out`` page
  (``text/html``), for REST and/or downloads as ``apply_to`` says.
- REST only: ``rate_cut_json`` runs the call and sends the first half of its JSON, with a
  Content-Length that matches the cut body (complete on the wire, invalid as JSON); ``rate_empty``
  answers 200 with an empty body (Content-Length 0).
- Downloads only: ``rate_html_download`` (and ``html_downloads=N`` for exactly the next N downloads)
  answers 200 ``text/html; charset=UTF-8`` with a Bitrix24-style login page (``<!DOCTYPE html><html>
  ... <form name="form_auth" ...>``); ``rate_json_download`` answers 200 ``application/json``
  ``{"error": "ERROR_UNEXPECTED_ANSWER", "error_description": ...}``; ``chunked_downloads=True`` sends
  every file with ``Transfer-Encoding: chunked`` and no Content-Length (the body is exact);
  ``expired_downloads=N``: the next N downloads answer 401 ``expired_token``, a webhook's links too;
  ``gzip_downloads=True``: a download whose ``Accept-Encoding`` names gzip comes gzip-compressed, with the
  compressed body's Content-Length (a compressing proxy).
- ``rate_stall`` (REST and/or downloads): the real answer's headers (full Content-Length) and half its
  body, then nothing for ``stall_seconds`` (default 30), then the rest; only a client read timeout
  gets past it. ``portal.stop()`` ends every stall at once and drops its connection.

Giving images back
------------------
``catalog.productImage.add`` and ``catalog.productImage.delete`` (:mod:`.writes`; notes §15), direct or as
``batch`` commands, scope ``catalog``.

- add: ``fields`` = ``{productId, type}``, ``fileContent`` = ``[name, base64]`` (a PHP array ``{"0": name,
  "1": base64}`` too). In a JSON body as sent; form-encoded or inside ``batch`` PHP-style
  (``fields[productId]=12&fields[type]=MORE_PHOTO&fileContent[0]=a.png&fileContent[1]=<base64>``), where the
  base64 must be percent-encoded: ``%2B`` ``%2F`` ``%3D`` arrive intact; a bare ``+`` reads as a space,
  as in PHP. The base64 is decoded as PHP's non-strict ``base64_decode``: characters outside the alphabet
  (that space included) are skipped and ``=`` ignored, so a stray ``+`` shifts the bits and other bytes
  are stored, without an error.
- Answer: ``{"result": {"productImage": {...as get...}}, "time"}``; a new image id (above every id that
  ever existed, so a deleted id never comes back) and a new file id. The image is then seen by ``get``,
  ``list``, downloads and the listings. The stored bytes are the decoded bytes, unchanged.
- ``type`` ``DETAIL_PICTURE`` / ``PREVIEW_PICTURE``: the new image replaces the product's images of that
  type (a real product has one; make_catalog's second ``DETAIL_PICTURE`` goes too): their ids answer
  "Image is not found", their links 404. Any other ``type`` (a typo, lower case, empty, none) is
  ``MORE_PHOTO``, which appends: the same bytes twice make two images with two ids.
- Checks, in order (HTTP 400, ``{"error", "error_description"}``): ``admin`` off or the product denied
  (:meth:`Portal.deny_product`) -> ``200040300020`` "Access Denied"; ``fields`` / ``fileContent`` missing or
  empty -> ``100`` "Required parameter 'fields' is not specified" (``'fileContent'``); no ``productId`` ->
  0 "Product identifier not specified"; unknown product -> 0 "Product is not found"; empty name -> 0 "The
  file name is not specified" (a slash, a backslash or NUL: "...contains invalid characters"; over 255
  characters: "...is too long"); base64 giving no bytes (empty, ``"!!!!"``, not a string) -> 0 "Could
  not save image."; an extension other than jpg, bmp, jpeg, jpe, gif, png, webp (any case) -> 0 "Invalid
  file type"; DETAIL/PREVIEW whose bytes are no JPEG, PNG, GIF, WebP or BMP (magic numbers) -> 0
  "Invalid file type: the file is not an image". MORE_PHOTO checks the extension only.
- Operating time: each applied add adds ``add_operating_s`` (default 1.1 s, the docs' example
  ``processing``) to its method's counter on top of its measured processing, so with ``operating_limit``
  adds run into ``OPERATION_TIME_LIMIT`` like any method (in a batch, per command).
- delete: ``productId``, ``id`` -> ``result: true``; the image goes (a DETAIL/PREVIEW field empties, a
  MORE_PHOTO value is removed). Errors: ``200040300020`` as for add; 100 for a missing or non-integer
  ``productId``/``id``; 0 "Product is not found"; 0 "Image is not found" (also for an image of another
  product).
- Stats: ``stats.adds`` (applied adds), ``stats.add_bytes`` (their decoded bytes, as sent),
  ``stats.deletes``; ``by_method`` / ``batch_commands`` count calls as for every method.
- Faults (:class:`Faults`, counted in ``stats.injected`` under their names): ``add_other_bytes=N`` (the next
  N adds) / ``rate_add_other_bytes`` store the sent bytes plus one zero byte; ``add_drop_answer=N`` /
  ``rate_add_drop_answer`` apply the add, then close the connection without a byte of answer (a batch
  runs every command first); ``slow_add`` seconds are slept in each add before it is applied (a client
  that times out finds the add done later).
- ``max_request_bytes`` (None: no limit): a request whose body is longer gets nginx's ``413 Request Entity
  Too Large`` HTML page (``text/html``) before the portal sees it: not counted in ``requests``, the bucket
  or ``by_method``; ``stats.injected["413"]``.
- Test helper: :meth:`Portal.gallery` -> ``[(image id, type, sha256 of the stored bytes), ...]`` by id.

Other readings of the open points
---------------------------------
Each a Portal attribute, settable while it runs, defaulting to the behaviour above (notes §13):

- listing picture ids (§13 / §12): ``listing_ids_match=False`` shows file ids (from 7001), not image ids.
- ``list`` at most N images (§13.5): ``image_list_cap=50`` shows the first 50 by id, ``total`` 50, no
  ``next``, however many the product has.
- ``list`` ignores ``start`` (§13.5): ``image_list_ignore_start=True`` answers pages (``image_page_size``, or
  50) that are always the first one, with ``next`` = the page size while more exist: a client that
  follows ``next`` blindly loops.
- refresh tokens (§13.8): ``rotate_refresh_tokens=True`` (default) kills the old refresh token at once;
  ``False`` keeps it valid.
- webhook download links (§13.1): ``link_ttl`` seconds (default 3600) and ``one_time_links`` (single use)
  apply to webhook links as to OAuth ones.

A renamed portal
----------------
``portal.rename()`` (on a running portal) makes a second port, the *old address*, answer every
request (any path, any verb) with ``302 Found``, an nginx HTML body and ``Location: <current
url><same path>?<same query>``, as Bitrix24 does after an address change (change-domain.md). The old
URLs are ``portal.old_url`` and ``portal.old_webhook_url``. Each request the old address saw is in
``portal.old_address_requests`` as ``(verb, path?query)``; ``stats.by_address`` counts requests per
``host:port`` and ``stats.redirected`` the 302s (which are not in ``stats.requests``, the bucket or
``by_method``). The old address stays across ``stop()``/``start()``.
"""

from .catalog import (
    OFFER_IBLOCK_ID,
    PRODUCT_IBLOCK_ID,
    CatalogImage,
    CatalogItem,
    make_catalog,
    make_store_catalog,
)
from .portal import MAX_BATCH, Faults, Portal, Stats

__all__ = [
    "MAX_BATCH",
    "OFFER_IBLOCK_ID",
    "PRODUCT_IBLOCK_ID",
    "CatalogImage",
    "CatalogItem",
    "Faults",
    "Portal",
    "Stats",
    "make_catalog",
    "make_store_catalog",
]
