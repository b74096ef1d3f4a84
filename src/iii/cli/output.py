"""How the CLI talks to people: ``error:``/``cause:``/``fix:`` on stderr, colour only on a TTY."""

from __future__ import annotations

import os
import sys
from typing import Optional

__all__ = ["fail", "info", "success", "interactive"]


def interactive() -> bool:
    """Progress and colour are for terminals only, and never with ``NO_COLOR``."""
    return sys.stderr.isatty() and not os.environ.get("NO_COLOR")


def _paint(text: str, code: str) -> str:
    return f"\033[{code}m{text}\033[0m" if interactive() else text


def fail(message: str, cause: Optional[str] = None, fix: Optional[str] = None, code: int = 1) -> int:
    """Print an error and return the exit status to use."""
    print(f"{_paint('error:', '31;1')} {message}", file=sys.stderr)
    if cause:
        print(f"cause: {cause}", file=sys.stderr)
    if fix:
        print(f"fix: {fix}", file=sys.stderr)
    return code


def info(message: str) -> None:
    print(message, file=sys.stderr)


def success(message: str) -> None:
    print(f"{_paint('✓', '32;1')} {message}", file=sys.stderr)
