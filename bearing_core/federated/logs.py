"""Flower's log, once and plain: one line per round and every warning, sent where the caller logs.

Flower's ``flwr`` logger has its own coloured console handler and also propagates to the root logger, so inside a
Prefect run each line appeared twice on the console, the first with ANSI colour codes, ~60 lines a training run
(the strategy's banner, four lines per round). :func:`flower_log_to` replaces both for the duration of a block:
Flower's INFO/DEBUG chatter is dropped, our own lines (the per-round line of
:class:`bearing_core.federated.strategies.RoundLedger`) and any warning or error go to ``sink`` once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

LOGGER_NAME = "flwr"
_OURS = str(Path(__file__).resolve().parent.parent)  # bearing_core/


class _Forward(logging.Handler):
    def __init__(self, sink: Callable[[int, str], None]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or (
            record.levelno >= logging.INFO and str(Path(record.pathname).resolve()).startswith(_OURS)
        )

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = " ".join(record.getMessage().split())  # Flower indents with tabs and tree glyphs
            if message:
                self.sink(record.levelno, message)
        except Exception:  # a log line must never break training
            self.handleError(record)


@contextlib.contextmanager
def flower_log_to(sink: Callable[[int, str], None]) -> Iterator[None]:
    """Within the block, Flower's log records go to ``sink(level, message)`` only (see the module doc)."""
    import flwr.supercore.logger  # noqa: F401  (attaches Flower's console handler on first import: remove it too)

    logger = logging.getLogger(LOGGER_NAME)
    handlers, propagate = list(logger.handlers), logger.propagate
    forward = _Forward(sink)
    for handler in handlers:
        logger.removeHandler(handler)
    logger.addHandler(forward)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(forward)
        for handler in handlers:
            logger.addHandler(handler)
        logger.propagate = propagate
