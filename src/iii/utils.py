"""Utilities of the official ``iii.utils``: formats from type hints, safe stringify, and
:func:`is_channel_ref` (from :mod:`iii.channels`)."""

from __future__ import annotations

import json
from typing import Any

from iii.channels import is_channel_ref
from iii.format_utils import extract_request_format, extract_response_format, python_type_to_format

__all__ = [
    "extract_request_format",
    "extract_response_format",
    "is_channel_ref",
    "python_type_to_format",
    "safe_stringify",
]


def safe_stringify(value: Any) -> str:
    """JSON text of ``value`` (``str()`` for what JSON cannot hold), or ``"[unserializable]"``."""
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return "[unserializable]"
