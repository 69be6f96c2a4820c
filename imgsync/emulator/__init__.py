"""A Bitrix24 portal emulator for the demo, the tests and the benchmark.

A real threaded HTTP/1.1 server on 127.0.0.1 (keep-alive, exact Content-Length) that follows the REST
docs summarised in ``bitrix24-api-notes.md``::

    from imgsync.emulator import Portal, Faults, make_catalog

    with Portal(make_catalog(products=10, images_per_product=3), rate_limit=2.0, burst=50) as portal:
        portal.webhook_url        # http://127.0.0.1:PORT/rest/1/k3y5ecr3tw3bh00k/
        access, refresh = portal.issue_tokens()
        portal.faults = Faults(rate_503=0.1, seed=3)

Run it alone with ``python -m imgsync.emulator --products 100`` (see ``__main__``).

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
- Methods: ``catalog.productImage.get``, ``catalog.productImage.list``, ``batch``, plus ``scope`` and
  ``server.time`` (no scope needed). Anything else: 404 ``ERROR_METHOD_NOT_FOUND`` "Method not found!".
- ``/rest/download.json?[auth=..&]token=..``: the ``downloadUrl`` of an image.
- ``/oauth/token/``: the OAuth server (refresh grant only).
- Any other path: 404 with nginx's HTML body.

Order of checks for a REST call: count it -> ``overload`` -> injected faults -> leaky bucket -> parse
parameters -> auth -> method exists -> scope -> operation limit -> the method. Every answer is delayed by
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
  every image of the product in id order on one page (``start`` is ignored, no ``next``); ``select``
  keeps only the named fields. A product whose images were all deleted still exists (``total: 0``).
- ``time``: ``start``, ``finish``, ``duration``, ``processing``, ``date_start``, ``date_finish`` (in
  +02:00), ``operating`` (seconds this method has run in the current window) and ``operating_reset_at``.
  The ten one-minute baskets are simplified to one 10-minute window per method starting at its first
  call; ``operating_reset_at`` is the end of that window, or, while an operation limit is active for the
  method, the (ceiled) unix time the block lifts.

``batch``
---------
``{"halt": 0|1, "cmd": {key: "method?query"} | ["method?query", ...]}``; each query is parsed PHP-style.
More than 50 commands: 400 ``ERROR_BATCH_LENGTH_EXCEEDED`` for the whole call (nothing runs). A nested
``batch`` or a download inside: that command's error ``ERROR_BATCH_METHOD_NOT_ALLOWED``. The answer is
always 200 once auth and the bucket let it in: ``{"result": {"result", "result_error", "result_total",
"result_next", "result_time"}, "time"}``. Sections follow PHP's ``json_encode``: an **empty section is
``[]``**, and a section whose keys are exactly ``"0".."n-1"`` (a list ``cmd``, or a dict with those keys)
is a **JSON list** too; other keys give an object. ``result_time`` holds successful commands only,
``result_total`` the ``list`` commands, ``result_next`` is always ``[]``. ``halt=1`` stops at the first
failing command; later ones are absent. ``$result[...]`` references are not supported.

Operation limit
---------------
:meth:`Portal.operation_limit` blocks a method for some seconds. A direct call answers **429**
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
  every file with ``Transfer-Encoding: chunked`` and no Content-Length (the body is exact).
- ``rate_stall`` (REST and/or downloads): the real answer's headers (full Content-Length) and half its
  body, then nothing for ``stall_seconds`` (default 30), then the rest; only a client read timeout
  gets past it. ``portal.stop()`` ends every stall at once and drops its connection.

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
