"""``batch``: up to 50 REST commands in one request, each command answered (or failed) on its own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import (
    DeadlineReached,
    ImageError,
    ImgsyncError,
    OperationTimeLimit,
    TokenExpired,
    TransientError,
)
from .errors import classify
from .pacing import BATCH_SIZE
from .transport import Transport, _unix_time


@dataclass(frozen=True)
class Answer:
    """One command's answer in a ``batch``: its result (or error), and a list command's ``total``/``next``."""

    value: Any
    total: int | None = None
    next: int | None = None


class BatchCalls(Transport):
    def command_error(self, error: Any, answer: Mapping[str, Any]) -> ImgsyncError:
        """The error of one command of a batch ``answer``. A time limit's says when the block lifts: the
        command's own ``operating_reset_at``, else the batch's, whatever other threads' answers noted meanwhile."""
        payload = error if isinstance(error, dict) else {"error": error}
        err = classify(0, payload)
        if isinstance(err, OperationTimeLimit):
            timing = answer.get("time")
            err.reset_at = (
                _unix_time(payload.get("operating_reset_at"))
                or _unix_time(timing.get("operating_reset_at") if isinstance(timing, dict) else None)
                or self._reset_at
            )
        return err

    def batch(self, commands: Mapping[str, str], *, chained: bool = False) -> dict[str, Answer]:
        """Run up to 50 commands in one ``batch`` call.

        Returns each key's :class:`Answer`: its result (or, for a command that failed, the error as an
        :class:`ImageError`) with the ``total`` and ``next`` of a list command. Commands that failed for
        a reason that may pass (a time limit, a 5xx inside the batch) are sent again in a new batch; an
        error that concerns the whole run (credentials, an unavailable portal) is raised.

        ``chained=True`` is for commands that reference earlier ones (``$result[key][...]``): a failed
        command is then never sent again on its own, since its references would resolve to nothing and it
        would read the wrong page. The batch runs with ``halt=1`` and the answers stop at the first failed
        command: keys after it are absent (not run). A transient failure of the *first* command is retried
        here (the whole batch again); a transient failure further on returns the answers before it, after
        the usual wait, and its error (a :class:`TransientError`) as its answer, so that the caller
        continues the chain from what it got.

        Before each attempt the commands wait for their methods' operating-time budget
        (:class:`OperatingBudget`); each command's ``result_time`` is noted for it.
        """
        if len(commands) > BATCH_SIZE:
            raise ValueError(f"a batch holds at most {BATCH_SIZE} commands, got {len(commands)}")
        methods = {key: command.partition("?")[0].strip() for key, command in commands.items()}
        pending = dict(commands)
        out: dict[str, Answer] = {}
        for attempt in range(self.retry.attempts):
            if not pending:
                break
            counts: dict[str, int] = {}
            for key in pending:
                counts[methods[key]] = counts.get(methods[key], 0) + 1
            try:
                with self.operating.reserve(counts, self._sleep):
                    data = self.call("batch", {"halt": 1 if chained else 0, "cmd": pending})
            except DeadlineReached as exc:
                if not out:
                    raise  # nothing answered: the whole batch is deferred
                return self._deferred(out, pending, exc, chained)
            result = data.get("result")
            results = _section(result, "result")
            errors = _section(result, "result_error")
            totals = _section(result, "result_total")
            nexts = _section(result, "result_next")
            for key, timing in _section(result, "result_time").items():
                if key in methods:
                    self.operating.note(methods[key], timing)
            retry_later: dict[str, str] = {}
            worst: TransientError | None = None
            for key, command in pending.items():
                if key in errors:
                    err = self.command_error(errors[key], data)
                    if err.fatal or isinstance(err, TokenExpired):
                        raise err
                    if chained:
                        if isinstance(err, TransientError):
                            if not out:  # nothing came: the whole chain may be sent again as it is
                                retry_later = dict(pending)
                                worst = err
                                break
                            try:
                                self._pause(err, attempt, f"a chain of {len(pending)} batch commands")
                            except DeadlineReached as exc:
                                return self._deferred(out, {key: command}, exc, chained)
                            out[key] = Answer(err)
                        else:
                            out[key] = Answer(_as_image_error(err))
                        return out
                    if isinstance(err, TransientError):
                        retry_later[key] = command
                        if worst is None or isinstance(err, OperationTimeLimit):
                            worst = err
                    else:
                        out[key] = Answer(_as_image_error(err))
                elif key in results:
                    out[key] = Answer(results[key], _count(totals.get(key)), _count(nexts.get(key)))
                elif chained:
                    # Not run (halt=1 after a failure we were not told about): the caller sends it again.
                    return out
                else:
                    out[key] = Answer(ImageError("the batch answer has no result for this command"))
            pending = retry_later
            if pending and worst is not None:
                try:
                    self._pause(worst, attempt, f"{len(pending)} batch commands")
                except DeadlineReached as exc:
                    if not out:
                        raise
                    # What the portal did answer is kept (an unchanged image needs no more work); only the
                    # commands still waiting for their turn are deferred.
                    return self._deferred(out, pending, exc, chained)
        for key in pending:
            out[key] = Answer(ImageError("the portal kept failing this command"))
            if chained:
                break
        return out

    @staticmethod
    def _deferred(
        out: dict[str, Answer], pending: Mapping[str, str], exc: DeadlineReached, chained: bool
    ) -> dict[str, Answer]:
        """``out`` with the commands not run by the deadline answered :class:`DeadlineReached` (a chain:
        its first one, where the caller stops)."""
        for key in pending:
            out[key] = Answer(exc)
            if chained:
                break
        return out


def _as_image_error(err: ImgsyncError) -> ImageError:
    return err if isinstance(err, ImageError) else ImageError(err.message)


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _section(result: Any, name: str) -> dict[str, Any]:
    """A batch result section; empty ones come as ``[]`` and numeric keys may come as a list."""
    if not isinstance(result, dict):
        return {}
    value = result.get(name)
    if isinstance(value, dict):
        return value
    if isinstance(value, list):
        return {str(n): v for n, v in enumerate(value)}
    return {}
