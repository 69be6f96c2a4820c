"""The emulated portal: :class:`Portal`, a façade over the portal's concerns, one module each.

- :mod:`.state`: the catalog (items, images, stored files) and the helpers tests call to change it;
- :mod:`.faults`: injected failures (:class:`Faults`), the counters (:class:`Stats`) and the gate a request
  passes first; :mod:`.limits`: the leaky bucket and the per-method operating-time budget;
- :mod:`.rest`: the method table, one method run, ``batch``; the methods: :mod:`.images`
  (``catalog.productImage.*``, with :mod:`.readings` and :mod:`.writes`), :mod:`.products` (the whole
  catalog's listings, with :mod:`.listing`);
- :mod:`.links`: signed download links and the download answer; :mod:`.oauth`: the webhook, OAuth tokens
  and the token endpoint.

Here: the settings, the lifecycle (start, stop, a renamed portal's old address) and the HTTP entry. The
behaviour, and every choice made where the docs are silent, is described in the package docstring
(:mod:`imgsync.emulator`).
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from . import writes
from .answers import HTML, INTERNAL, NGINX_302, NGINX_404, ApiError
from .catalog import CatalogImage, CatalogItem
from .faults import FaultGate, Faults, Stats
from .images import Images
from .limits import OPERATING_WINDOW, Limits
from .links import Links
from .oauth import Credentials
from .products import Products
from .rest import MAX_BATCH, Rest, canonical
from .server import PortalServer, Reply, Request, json_reply
from .state import CatalogState

__all__ = ["ApiError", "Faults", "Portal", "Stats", "MAX_BATCH", "OPERATING_WINDOW"]


def _serve(server: PortalServer, name: str) -> threading.Thread:
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
    )
    thread.start()
    return thread


class Portal(CatalogState, FaultGate, Limits, Credentials, Links, Rest, Images, Products):
    """An emulated Bitrix24 portal: ``catalog.productImage.*``, the catalog listings, ``batch``, downloads
    and OAuth.

    See the package docstring for the behaviour. Every attribute given to the constructor (and
    ``overload``, ``faults``) may be changed while it runs.
    """

    def __init__(
        self,
        catalog: Iterable[CatalogImage] = (),
        *,
        items: Iterable[CatalogItem] | None = None,
        rate_limit: float = 2.0,
        burst: float = 50,
        count_downloads: bool = True,
        latency: float = 0.0,
        link_ttl: float = 3600.0,
        one_time_links: bool = False,
        webhook_user: int = 1,
        webhook_code: str = "k3y5ecr3tw3bh00k",
        scopes: Iterable[str] = ("catalog",),
        client_id: str = "local.app1",
        client_secret: str = "s3cr3tcl1ent",
        access_token_ttl: float = 3600.0,
        rotate_refresh_tokens: bool = True,
        port: int = 0,
        admin: bool = True,
        listing_ids_match: bool = True,
        image_page_size: int | None = None,
        operating_limit: float | None = None,
        cost_per_call: float = 0.0,
        method_cost: dict[str, float] | None = None,
        operating_window: float = OPERATING_WINDOW,
        add_operating_s: float = writes.ADD_OPERATING_S,
        max_request_bytes: int | None = None,
        image_list_cap: int | None = None,
        image_list_ignore_start: bool = False,
    ) -> None:
        self.rate_limit = rate_limit
        self.burst = burst
        self.count_downloads = count_downloads
        self.latency = latency
        self.link_ttl = link_ttl
        self.one_time_links = one_time_links
        self.webhook_user = webhook_user
        self.webhook_code = webhook_code
        self.scopes = tuple(scopes)
        self.client_id = client_id
        self.client_secret = client_secret
        self.access_token_ttl = access_token_ttl
        self.rotate_refresh_tokens = rotate_refresh_tokens
        #: False: the admin-only methods (catalog.catalog.list, the sku/offer/service lists) are denied.
        self.admin = admin
        #: False: listings show picture ids that are not the image ids (the stored files' ids).
        self.listing_ids_match = listing_ids_match
        #: None: catalog.productImage.list answers every image on one page; N: pages of N with start/next.
        self.image_page_size = image_page_size
        #: Seconds of operating time a method may use within ``operating_window`` (None: no limit).
        self.operating_limit = operating_limit
        #: Seconds added to a method's operating time per executed call (``method_cost`` per method).
        self.cost_per_call = cost_per_call
        self.method_cost = {canonical(k): v for k, v in (method_cost or {}).items()}
        self.operating_window = operating_window
        #: Operating seconds each applied catalog.productImage.add adds to its method's budget.
        self.add_operating_s = add_operating_s
        #: Request bodies larger than this many bytes get nginx's 413 page (None: no limit).
        self.max_request_bytes = max_request_bytes
        #: catalog.productImage.list shows only the first N images, no next (notes §13.5; None: all).
        self.image_list_cap = image_list_cap
        #: catalog.productImage.list pages ignore start: the first page again, with a next (notes §13.5).
        self.image_list_ignore_start = image_list_ignore_start
        self.overload = False
        self.faults = Faults()
        #: Item ids deleted (as by :meth:`delete_item`) right after a ``catalog.product.list`` page has shown
        #: them: an item deleted between the catalog's listing and its ``catalog.productImage.list``.
        self.delete_once_listed: set[int] = set()
        #: Catalog (iblock) ids that ``catalog.catalog.list`` leaves out, as if removed; all of them: ``[]``.
        self.hidden_catalogs: set[int] = set()
        #: Catalog (iblock) ids whose items no item listing shows (``catalog.product.list`` answers ``[]``).
        self.empty_catalogs: set[int] = set()
        #: ``(product_id, image_id) -> value``: the ``id`` the answers show for that image instead of its
        #: number (a portal or proxy answering ``"12a"``, say); downloads and everything else are unchanged.
        self.answered_ids: dict[tuple[int, int], Any] = {}
        #: Tracebacks of unexpected exceptions in the emulator itself (answered 500); tests assert it is empty.
        self.server_errors: list[str] = []

        self._init_state()
        self._init_credentials()
        self._init_links()
        self._writes = writes.ImageWrites(self)
        self._init_counters()
        self._init_limits()

        self._port = port
        self._url = ""
        self._server: PortalServer | None = None
        self._thread: threading.Thread | None = None
        # The old address of a renamed portal (see rename()).
        self._old_port = 0
        self._old_server: PortalServer | None = None
        self._old_thread: threading.Thread | None = None
        #: ``(verb, path?query)`` of every request that reached the old address of a renamed portal.
        self.old_address_requests: list[tuple[str, str]] = []

        with self._state_lock:
            for item in items or ():
                self._put_item(item)
            for image in catalog:
                self._insert(image)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Portal:
        """Listen on 127.0.0.1 (a free port unless ``port`` was given; the same port on a restart)."""
        if self._server is not None:
            return self
        server = PortalServer(self._port, self.handle)
        self._port = server.server_port
        self._url = f"http://127.0.0.1:{self._port}"
        self._server = server
        self._thread = _serve(server, "bitrix24-emulator")
        if self._old_port:
            self._listen_old()
        return self

    def stop(self) -> None:
        """Stop listening (on the old address too) and cut every open connection. It may be started again."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        old, old_thread = self._old_server, self._old_thread
        self._old_server = self._old_thread = None
        for srv, thr in ((server, thread), (old, old_thread)):
            if srv is None:
                continue
            srv.stopping.set()
            srv.shutdown()
            srv.close_connections()
            srv.server_close()
            if thr is not None:
                thr.join(timeout=5)

    def rename(self) -> str:
        """The portal moves: from now on a second port, the *old address*, answers every request with
        ``302 Found`` and a ``Location`` on the current address (same path and query string), as Bitrix24
        does after an address change (change-domain.md). Returns :attr:`old_webhook_url`.

        The portal must be running; the old address stays (across restarts) until the portal is dropped.
        """
        if self._server is None:
            raise RuntimeError("the portal has not been started")
        if self._old_server is None:
            self._listen_old()
        return self.old_webhook_url

    def _listen_old(self) -> None:
        server = PortalServer(self._old_port, self._redirect)
        self._old_port = server.server_port
        self._old_server = server
        self._old_thread = _serve(server, "bitrix24-emulator-old-address")

    def _redirect(self, request: Request) -> Reply:
        target = request.path + (f"?{request.query}" if request.query else "")
        with self._lock:
            self._stats.by_address[f"127.0.0.1:{self._old_port}"] += 1
            self._stats.redirected += 1
            self.old_address_requests.append((request.verb, target))
        return Reply(302, NGINX_302, HTML, [("Location", self.url + target)], delay=self.latency)

    def __enter__(self) -> Portal:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if not self._url:
            raise RuntimeError("the portal has not been started")
        return self._url

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/rest/{self.webhook_user}/{self.webhook_code}/"

    @property
    def token_url(self) -> str:
        return f"{self.url}/oauth/token/"

    @property
    def old_url(self) -> str:
        """The old address of a renamed portal (see :meth:`rename`)."""
        if not self._old_port:
            raise RuntimeError("the portal has not been renamed")
        return f"http://127.0.0.1:{self._old_port}"

    @property
    def old_webhook_url(self) -> str:
        """The webhook URL on the old address: what a client configured before the rename still uses."""
        return f"{self.old_url}/rest/{self.webhook_user}/{self.webhook_code}/"

    # ----------------------------------------------------------------- HTTP entry

    def handle(self, request: Request) -> Reply:
        """Answer one HTTP request (called by the server's threads)."""
        with self._lock:
            self._stats.by_address[f"127.0.0.1:{self._port}"] += 1
        try:
            refused = writes.too_large(self, request)
            if refused is not None:
                return refused
            segs = [s for s in request.path.split("/") if s]
            if segs and segs[0] == "rest":
                if len(segs) == 2 and segs[1].lower() == "download.json":
                    return self._download(request)
                return self._rest(request, segs[1:])
            if segs == ["oauth", "token"]:
                return self._oauth(request)
            self._count("other")
            return Reply(404, NGINX_404, HTML)
        except Exception:
            self.server_errors.append(traceback.format_exc())
            return json_reply(500, INTERNAL)
