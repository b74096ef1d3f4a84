"""``Logger``: the official SDK's structured logger, on the standard ``logging`` module.

Records go to the ``iii`` logger (or the ``service_name`` one) with the data and trace ids in
``extra``; the SDK never configures handlers, so the application decides where they go.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

__all__ = ["Logger"]


class Logger:
    """``info/warn/error/debug(message, data=None)`` as in the official SDK."""

    def __init__(self, trace_id: Optional[str] = None, service_name: Optional[str] = None, span_id: Optional[str] = None) -> None:
        self._logger = logging.getLogger(service_name or "iii")
        self._context = {"trace_id": trace_id, "span_id": span_id, "service_name": service_name}

    def _log(self, level: int, message: str, data: Any) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, message, extra={"iii_data": data, **{f"iii_{k}": v for k, v in self._context.items()}})

    def debug(self, message: str, data: Any = None) -> None:
        self._log(logging.DEBUG, message, data)

    def info(self, message: str, data: Any = None) -> None:
        self._log(logging.INFO, message, data)

    def warn(self, message: str, data: Any = None) -> None:
        self._log(logging.WARNING, message, data)

    def error(self, message: str, data: Any = None) -> None:
        self._log(logging.ERROR, message, data)
