"""The command line: click commands over the callable cores (:mod:`imgsync.runner`, :mod:`imgsync.restore`,
:mod:`imgsync.verify`, ...); the one place with click and tqdm, and nothing imports it.

One module per command (``sync``, ``restore``, ``status``, ``verify``, ``check``, ``report``, ``rebuild``,
``demo``), each wiring only: options in, one call of the core, its ending printed. Shared: ``_options``
(``--config`` and the settings, ``-v``/``-q``), ``_logging`` (stderr, the log file, a run's last words),
``_output`` (summaries, failures, JSON, errors as exit codes), ``_signals``; ``main`` holds the group.
"""

from .main import cli, main

__all__ = ["cli", "main"]
