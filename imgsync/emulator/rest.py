"""The REST entry: the method table, parameters, auth, then one method run (scope, operation limit, handler,
``time``), and ``batch`` with its ``$result[...]`` references. The handlers (``_m_*``) live with their
concern (:mod:`.images`, :mod:`.products`, :mod:`.writes`); they are looked up on the portal by name, so a
test may replace one on an instance.

The behaviour is described in the package docstring (:mod:`imgsync.emulator`), "Endpoints" and "``batch``".
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .answers import ApiError, iso, php_array, truthy
from .faults import Stats
from .server import Reply, Request, json_reply, php_parse

if TYPE_CHECKING:
    from .oauth import Cred
    from .writes import ImageWrites

__all__ = ["MAX_BATCH", "Rest", "canonical"]

MAX_BATCH = 50


@dataclass(frozen=True, slots=True)
class _Method:
    name: str
    scope: str | None
    handler: str


_METHODS = {
    m.name.lower(): m
    for m in (
        _Method("catalog.productImage.get", "catalog", "_m_get"),
        _Method("catalog.productImage.list", "catalog", "_m_list"),
        _Method("catalog.productImage.add", "catalog", "_m_add"),
        _Method("catalog.productImage.delete", "catalog", "_m_delete"),
        _Method("catalog.catalog.list", "catalog", "_m_catalogs"),
        _Method("catalog.product.list", "catalog", "_m_products"),
        _Method("catalog.product.sku.list", "catalog", "_m_skus"),
        _Method("catalog.product.offer.list", "catalog", "_m_offers"),
        _Method("catalog.product.service.list", "catalog", "_m_services"),
        _Method("catalog.productProperty.list", "catalog", "_m_properties"),
        _Method("batch", None, ""),
        _Method("scope", None, "_m_scope"),
        _Method("server.time", None, "_m_server_time"),
    )
}
_DOWNLOAD_NAMES = ("download", "download.json")


def _method_name(raw: str) -> str:
    name = raw.strip().lower()
    return name[:-5] if name.endswith(".json") else name


def canonical(raw: str) -> str:
    """The method's name as the portal spells it (``catalog.productimage.get`` -> ``catalog.productImage.get``)."""
    known = _METHODS.get(_method_name(raw))
    return known.name if known else raw


_REF = re.compile(r"\$result\[([^\]]*)\]((?:\[[^\]]*\])*)")
_REF_PART = re.compile(r"\[([^\]]*)\]")


def _lookup_ref(match: re.Match[str], results: dict[str, Any]) -> Any:
    """The value a ``$result[key][a][b]...`` reference names, or "" when there is none."""
    node: Any = results.get(match.group(1))
    for part in _REF_PART.findall(match.group(2)):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            node = None
        if node is None:
            return ""
    if isinstance(node, bool):
        return "1" if node else ""
    return node if isinstance(node, int | float | str) else ""


def _resolve_refs(value: Any, results: dict[str, Any]) -> Any:
    """Replace batch references in parsed command parameters by earlier commands' results."""
    if isinstance(value, dict):
        return {key: _resolve_refs(item, results) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(item, results) for item in value]
    if not isinstance(value, str) or "$result[" not in value:
        return value
    whole = _REF.fullmatch(value)
    if whole:
        return _lookup_ref(whole, results)
    return _REF.sub(lambda m: str(_lookup_ref(m, results)), value)


class Rest:
    """Answers ``/rest/...``: what :meth:`_call` runs is the handler the method table names."""

    latency: float
    scopes: tuple[str, ...]
    cost_per_call: float
    method_cost: dict[str, float]
    _lock: threading.Lock
    _stats: Stats
    _writes: ImageWrites

    if TYPE_CHECKING:

        def _admit(self, label: str, kind: str, counted: bool) -> tuple[Reply | None, str]: ...

        def _mangle(self, reply: Reply, mangle: str) -> Reply: ...

        def _authenticate(self, hook: tuple[str, str] | None, params: dict[str, Any]) -> Cred: ...

        def _check_budget(self, name: str) -> None: ...

        def _time(
            self,
            start: float,
            work_start: float,
            name: str,
            seconds: float | None = None,
            related: Iterable[str] = (),
            cost: float = 0.0,
        ) -> dict[str, Any]: ...

    def _rest(self, request: Request, segs: list[str]) -> Reply:
        hook = (segs[0], segs[1]) if len(segs) >= 2 else None
        raw = segs[0] if hook is None else "/".join(segs[2:])
        method = _METHODS.get(_method_name(raw))
        early, mangle = self._admit(method.name if method else raw or "(none)", "rest", counted=True)
        if early is not None:
            return early
        self._writes.begin()
        return self._writes.finish(self._mangle(self._rest_answer(request, hook, method), mangle))

    def _rest_answer(self, request: Request, hook: tuple[str, str] | None, method: _Method | None) -> Reply:
        delay = self.latency
        start = time.time()
        try:
            params = self._params(request)
            cred = self._authenticate(hook, params)
            if method is None:
                raise ApiError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
            if method.name == "batch":
                return json_reply(200, self._batch(params, cred, start), delay)
            result, total, following, timing = self._call(method, params, cred, start)
        except ApiError as exc:
            return json_reply(exc.status, exc.body(), delay)
        body: dict[str, Any] = {"result": result}
        if following is not None:
            body["next"] = following
        if total is not None:
            body["total"] = total
        body["time"] = timing
        return json_reply(200, body, delay)

    def _params(self, request: Request) -> dict[str, Any]:
        """Query string, then a JSON or form body on top."""
        params = php_parse(request.query) if request.query else {}
        body = request.body
        if body:
            ctype = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
            if ctype.endswith("json") or (ctype != "application/x-www-form-urlencoded" and body[:1] == b"{"):
                try:
                    data = json.loads(body)
                except ValueError:
                    raise ApiError(400, "ERROR_ARGUMENT", "The request body is not valid JSON") from None
                if not isinstance(data, dict):
                    raise ApiError(400, "ERROR_ARGUMENT", "The request body must be a JSON object")
                params.update(data)
            else:
                params.update(php_parse(body.decode("utf-8", "replace")))
        return params

    def _call(
        self, method: _Method, params: dict[str, Any], cred: Cred, start: float
    ) -> tuple[Any, int | None, int | None, dict[str, Any]]:
        """Run one method (top level or inside batch): scope, operation limit, handler, time object.

        Returns (result, total, next, time)."""
        if method.scope and method.scope not in self.scopes:
            raise ApiError(
                403,
                "insufficient_scope",
                "The request requires higher privileges than provided by the webhook token",
            )
        self._check_budget(method.name)
        work_start = time.time()
        result, total, following = (*getattr(self, method.handler)(params, cred), None)[:3]
        cost = self.method_cost.get(method.name, self.cost_per_call)
        return result, total, following, self._time(start, work_start, method.name, cost=cost)

    def _batch(self, params: dict[str, Any], cred: Cred, start: float) -> dict[str, Any]:
        cmd = params.get("cmd") or {}
        if isinstance(cmd, dict):
            items = [(str(key), value) for key, value in cmd.items()]
        elif isinstance(cmd, list):
            items = [(str(i), value) for i, value in enumerate(cmd)]
        else:
            raise ApiError(400, "ERROR_ARGUMENT", "cmd must be an object or an array")
        if len(items) > MAX_BATCH:
            raise ApiError(400, "ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")
        halt = truthy(params.get("halt", 0))
        results: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        totals: dict[str, Any] = {}
        nexts: dict[str, Any] = {}
        times: dict[str, Any] = {}
        executed: Counter[str] = Counter()
        for key, command in items:
            raw, _, query = str(command).partition("?")
            name = _method_name(raw)
            method = _METHODS.get(name)
            executed[method.name if method else raw.strip()] += 1
            try:
                if name in _DOWNLOAD_NAMES or (method is not None and method.name == "batch"):
                    raise ApiError(
                        405, "ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage"
                    )
                if method is None:
                    raise ApiError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
                sub = _resolve_refs(php_parse(query), results)
                sub.pop("auth", None)
                result, total, following, timing = self._call(method, sub, cred, time.time())
            except ApiError as exc:
                errors[key] = exc.body()
                if halt:
                    break
                continue
            results[key] = result
            times[key] = timing
            if total is not None:
                totals[key] = total
            if following is not None:
                nexts[key] = following
        with self._lock:
            self._stats.batch_commands.update(executed)
        return {
            "result": {
                "result": php_array(results),
                "result_error": php_array(errors),
                "result_total": php_array(totals),
                "result_next": php_array(nexts),
                "result_time": php_array(times),
            },
            # The outer batch is not counted in operating; its reset time is that of its blocked commands.
            "time": self._time(start, start, "batch", seconds=0.0, related=executed),
        }

    def _m_scope(self, params: dict[str, Any], cred: Cred) -> tuple[Any, None]:
        return list(self.scopes), None

    def _m_server_time(self, params: dict[str, Any], cred: Cred) -> tuple[Any, None]:
        return iso(int(time.time())), None
