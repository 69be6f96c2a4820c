"""Another portal: which target product each source product's images go to.

- ``--map CSV``: :func:`read_map` reads ``source_product_id,target_product_id`` lines, checked before any
  request (a source mapped to two targets is an input error naming both lines); a selected product the
  file does not name is unmatched.
- ``--match xml_id`` / ``--match code``: :func:`source_keys` reads each selected item's key from the source
  database's ``products`` table (``sync --all`` records it; a product without one is an input error, before
  any request); :func:`match_by_key` looks for those keys with ``catalog.product.list`` over each of the
  target's trade catalogs, many keys to a command (an array filter value is IN) and many commands to a
  ``batch``.

Nothing is guessed: a key that is empty, equals the source item's own id (the portal's default ``XML_ID``,
notes §15), or finds no target item or several leaves that product unmatched, with the reason. A target item
whose key equals its own id carries the portal's default, not a key an import set: it is no match either.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO
from urllib.parse import quote

from ..bitrix import BATCH_SIZE, Client
from ..bitrix.catalog import LIST_METHOD, list_catalogs
from ..errors import ImgsyncError, InputError
from ..inputs import iter_map_csv
from ..store import Store

log = logging.getLogger(__name__)

#: The ``products`` column and the ``catalog.product.list`` field of each ``--match`` key.
KEYS = {"xml_id": "xmlId", "code": "code"}
#: Keys in one ``catalog.product.list`` filter (an IN list); a page holds 50 items, so a chunk of 25 keys
#: fits one page unless keys repeat on the target (the next pages are then asked too).
KEYS_PER_COMMAND = 25


@dataclass(frozen=True)
class Match:
    """Where a source product's images go: ``target_product_id``, or None and why (``reason``)."""

    product_id: int
    target_product_id: int | None
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id,
            "target_product_id": self.target_product_id,
            "reason": self.reason,
        }


def read_map(path: str, stdin: TextIO | BinaryIO | None = None) -> dict[int, int]:
    """``{source product id: target product id}`` of a ``--map`` file; raises :class:`InputError` naming the
    file and line of the first bad line, or of a source product mapped to two targets."""
    out: dict[int, int] = {}
    where_of: dict[int, str] = {}
    for source, target, where in iter_map_csv(path, stdin):
        if source in out and out[source] != target:
            raise InputError(
                f"{where}: source product {source} is mapped to {target} here and to {out[source]} at "
                f"{where_of[source]}"
            )
        out.setdefault(source, target)
        where_of.setdefault(source, where)
    return out


def mapped(product_ids: Sequence[int], mapping: Mapping[int, int], name: str) -> dict[int, Match]:
    """The ``--map`` file's target of each selected source product (unmatched when it names none)."""
    return {
        pid: Match(pid, mapping[pid], f"mapped by {name}")
        if pid in mapping
        else Match(pid, None, f"{name} names no target for product {pid}")
        for pid in product_ids
    }


def source_keys(store: Store, product_ids: Sequence[int], key: str) -> dict[int, str]:
    """Each selected source item's ``key`` (``xml_id`` or ``code``) as ``sync --all`` recorded it (``""``:
    the listing showed none). Raises :class:`InputError` naming the first product the source database has
    no key of: the listing that records keys has not run there."""
    keys = store.product_keys(product_ids)
    out: dict[int, str] = {}
    for pid in product_ids:
        row = keys.get(pid)
        value = None if row is None else row.xml_id if key == "xml_id" else row.code
        if value is None:
            what = "no products row" if row is None else f"no {key} recorded"
            raise InputError(
                f"--match {key}: the source database {store.path} has {what} for product {pid}: run "
                "`imgsync sync --all` on the source first (it records each listed item's xml_id, code and name)"
            )
        out[pid] = value
    return out


def match_by_key(client: Client, keys: Mapping[int, str], key: str) -> dict[int, Match]:
    """The target item of each source product (``{source product id: key}``), found by ``key`` with
    ``catalog.product.list`` over the target's trade catalogs; see the module docstring."""
    field_name = KEYS[key]
    out: dict[int, Match] = {}
    wanted: dict[str, list[int]] = {}
    for pid, value in keys.items():
        if not value:
            out[pid] = Match(pid, None, f"its {key} is empty")
        elif value == str(pid):
            out[pid] = Match(
                pid,
                None,
                f"its {key} {value!r} is its own id (the portal's default), not a key of the import",
            )
        else:
            wanted.setdefault(value, []).append(pid)
    found, defaults, failed = _look_up(client, field_name, list(wanted))
    for value, pids in wanted.items():
        targets = sorted(found.get(value, set()))
        for pid in pids:
            if value in failed:
                out[pid] = Match(pid, None, f"{key} {value!r} could not be looked for: {failed[value]}")
            elif len(targets) == 1:
                out[pid] = Match(pid, targets[0], f"{key} {value!r}")
            elif targets:
                shown = ", ".join(str(t) for t in targets[:10]) + (", ..." if len(targets) > 10 else "")
                out[pid] = Match(pid, None, f"{len(targets)} target items have {key} {value!r}: {shown}")
            elif value in defaults:
                out[pid] = Match(
                    pid,
                    None,
                    f"no target item has {key} {value!r} (item {value} has it only as its own id, the default)",
                )
            else:
                out[pid] = Match(pid, None, f"no target item has {key} {value!r}")
    return {pid: out[pid] for pid in keys}


def _look_up(
    client: Client, field_name: str, values: Sequence[str]
) -> tuple[dict[str, set[int]], set[str], dict[str, str]]:
    """``(key -> target item ids, keys only found as an item's own id, key -> why it could not be looked
    for)``. Each item's key is compared exactly as listed: the portal's filter narrows, it does not decide."""
    found: dict[str, set[int]] = {}
    defaults: set[str] = set()
    failed: dict[str, str] = {}
    if not values:
        return found, defaults, failed
    catalogs = list_catalogs(client)
    # (catalog, keys, start): one command each, asked again from `next` while pages follow.
    queue: list[tuple[int, tuple[str, ...], int]] = [
        (catalog.iblock_id, tuple(values[at : at + KEYS_PER_COMMAND]), 0)
        for catalog in catalogs
        for at in range(0, len(values), KEYS_PER_COMMAND)
    ]
    asked = 0
    while queue:
        part, queue = queue[:BATCH_SIZE], queue[BATCH_SIZE:]
        commands = {f"k{asked + n}": _command(field_name, *spec) for n, spec in enumerate(part)}
        asked += len(part)
        answers = client.batch(commands)
        for (key, _), spec in zip(commands.items(), part, strict=True):
            iblock, chunk, start = spec
            answer = answers.get(key)
            value = answer.value if answer is not None else None
            rows = value.get("products") if isinstance(value, dict) else None
            if not isinstance(rows, list):
                why = value.message if isinstance(value, ImgsyncError) else "unexpected answer (no products)"
                for k in chunk:
                    failed.setdefault(k, f"{LIST_METHOD} of catalog {iblock}: {why}")
                continue
            wanted = set(chunk)
            for row in rows:
                if not isinstance(row, dict):
                    continue
                item_id, shown = row.get("id"), row.get(field_name)
                if shown is None or isinstance(shown, dict | list) or str(shown).strip() not in wanted:
                    continue
                text = str(shown).strip()
                if str(item_id).strip() == text:
                    defaults.add(text)  # the portal's default XML_ID: not a key an import set
                    continue
                try:
                    found.setdefault(text, set()).add(int(str(item_id)))
                except (TypeError, ValueError):
                    failed.setdefault(
                        text, f"{LIST_METHOD} answered an item id {item_id!r} that is no number"
                    )
            if answer is not None and answer.next is not None and answer.next > start and rows:
                queue.append((iblock, chunk, answer.next))
    return found, defaults, failed


def _command(field_name: str, iblock: int, keys: Sequence[str], start: int) -> str:
    filters = "&".join(f"filter[{field_name}][{n}]={quote(k, safe='')}" for n, k in enumerate(keys))
    return (
        f"{LIST_METHOD}?select[]=id&select[]=iblockId&select[]={field_name}&filter[iblockId]={iblock}&"
        f"{filters}&order[id]=asc&start={start}"
    )
