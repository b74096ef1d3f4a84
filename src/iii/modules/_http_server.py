"""Chooses the HTTP/1.1 server under ``iii-http``: ``iii.modules._http_server_c`` (the pure
twin ``_http_server_py.py`` compiled by Cython: the same source, less CPU per request) when the
compiled codec is in use, else ``_http_server_py`` run as Python.

``III_NO_EXTENSIONS=1`` forces the pure twins (through :mod:`iii.codec`).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from iii.codec import IMPLEMENTATION
from iii.modules import _http_server_py

implementation: ModuleType = _http_server_py
if IMPLEMENTATION == "c":
    try:
        implementation = importlib.import_module("iii.modules._http_server_c")
    except ImportError:  # not built: the pure twin serves
        pass

if TYPE_CHECKING:
    from iii.modules._http_server_py import FRAMING_HEADERS, BodyTooLarge, Request, Response, Stream, serve
else:
    FRAMING_HEADERS = implementation.FRAMING_HEADERS
    BodyTooLarge = implementation.BodyTooLarge
    Request = implementation.Request
    Response = implementation.Response
    Stream = implementation.Stream
    serve = implementation.serve

__all__ = ["FRAMING_HEADERS", "BodyTooLarge", "Request", "Response", "Stream", "implementation", "serve"]
