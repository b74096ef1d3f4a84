"""The web console (``iii console``): a worker on our SDK that serves a page to watch and drive
the engine from a browser.

One process, one event loop: :class:`~iii.console._link.EngineLink` is the worker (it calls
``engine::*``, ``state::*``, ``stream::*`` and queue functions for the page, and binds the
discovery and ``state`` triggers to functions of its own to learn about changes), and
:mod:`iii.console._server` is the aiohttp server the browser talks to (static page files, a JSON
call endpoint, a live WebSocket that relays those changes, and a pipe to the engine's stream
socket). Nothing is built at install time: the page is plain HTML, CSS and JavaScript shipped in
``static/``.
"""

from typing import Any

__all__ = ["ConsoleOptions", "EngineLink", "LiveHub", "make_app", "serve"]


def __getattr__(name: str) -> Any:
    # Lazy: `iii` imports the `console` subcommand's parser; aiohttp loads only when it runs.
    if name in ("EngineLink", "LiveHub"):
        from iii.console import _link

        return getattr(_link, name)
    if name in __all__:
        from iii.console import _server

        return getattr(_server, name)
    raise AttributeError(f"module 'iii.console' has no attribute {name!r}")
