"""JSON Schemas from type hints: what ``register_function`` sends as ``request_format`` /
``response_format`` when they are not given (the official SDK's rules, without pydantic).

A handler's first parameter annotation is its request format, its return annotation its response
format. Supported: ``str``/``int``/``float``/``bool``/``None``, ``list[X]``, ``dict[str, X]``,
``Optional[X]`` (as the official SDK writes them), and models: pydantic models (when pydantic is
installed), msgspec Structs, dataclasses and TypedDicts (their schemas made by msgspec). Anything
else gives no format.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import types
import typing
from typing import Any, Optional, get_args, get_origin, get_type_hints

import msgspec

__all__ = ["extract_request_format", "extract_response_format", "python_type_to_format", "schema_of"]

_PRIMITIVES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_JSON_SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _optional_inner(annotation: Any) -> Optional[Any]:
    """``X`` for ``Optional[X]`` / ``X | None``, else ``None``."""
    if get_origin(annotation) in (types.UnionType, typing.Union):
        args = get_args(annotation)
        non_none = [a for a in args if a is not type(None)]
        if len(args) == 2 and len(non_none) == 1:
            return non_none[0]
    return None


def _is_pydantic_model(annotation: Any) -> bool:
    pydantic = sys.modules.get("pydantic")  # a model of it exists only if it was imported
    return pydantic is not None and isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)


def _is_typed_dict(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, dict) and hasattr(annotation, "__total__")


def schema_of(model: Any) -> dict[str, Any]:
    """msgspec's JSON Schema of a Struct, dataclass or TypedDict, with the model itself inline
    (its ``$defs`` kept for what it refers to)."""
    schema = msgspec.json.schema(model)
    ref = schema.get("$ref")
    if ref is None:
        return schema
    defs = schema["$defs"]
    name = ref.rsplit("/", 1)[-1]
    top = dict(defs[name])
    if ref not in json.dumps(top) and all(ref not in json.dumps(d) for k, d in defs.items() if k != name):
        del defs[name]  # not recursive: nothing else points at it
    if defs:
        top["$defs"] = defs
    return top


def _to_json_schema(annotation: Any) -> Optional[dict[str, Any]]:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return None
    inner = _optional_inner(annotation)
    if inner is not None:
        schema = _to_json_schema(inner)
        if schema is not None and "type" in schema:
            schema["type"] = [schema["type"], "null"]
        return schema
    if annotation is type(None):
        return {"type": "null"}
    if annotation in _PRIMITIVES:
        return {"type": _PRIMITIVES[annotation]}
    origin = get_origin(annotation)
    if origin is list or annotation is list:
        args = get_args(annotation)
        schema = {"type": "array"}
        items = _to_json_schema(args[0]) if args else None
        if items is not None:
            schema["items"] = items
        return schema
    if origin is dict or annotation is dict:
        args = get_args(annotation)
        schema = {"type": "object"}
        values = _to_json_schema(args[1]) if len(args) >= 2 else None
        if values is not None:
            schema["additionalProperties"] = values
        return schema
    if _is_pydantic_model(annotation):
        return annotation.model_json_schema()
    if isinstance(annotation, type) and (
        issubclass(annotation, msgspec.Struct) or dataclasses.is_dataclass(annotation) or _is_typed_dict(annotation)
    ):
        try:
            return schema_of(annotation)
        except (TypeError, ValueError):  # a field type msgspec cannot describe
            return None
    return None


def python_type_to_format(annotation: Any) -> Optional[dict[str, Any]]:
    """The JSON Schema (with its ``$schema`` header) of a type hint, or ``None``."""
    schema = _to_json_schema(annotation)
    if schema is not None:
        schema["$schema"] = _JSON_SCHEMA_DRAFT
    return schema


def _hints(func: Any) -> dict[str, Any]:
    try:
        return get_type_hints(func)
    except Exception:  # unresolvable forward references: no format, as the official SDK does
        return {}


def extract_request_format(func: Any) -> Optional[dict[str, Any]]:
    """The format of ``func``'s first parameter, from its type hint (``None`` without one)."""
    if not callable(func):
        return None
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None
    if not params:
        return None
    return python_type_to_format(_hints(func).get(params[0].name, inspect.Parameter.empty))


def extract_response_format(func: Any) -> Optional[dict[str, Any]]:
    """The format of ``func``'s return value, from its type hint (``None`` without one)."""
    if not callable(func):
        return None
    return python_type_to_format(_hints(func).get("return", inspect.Parameter.empty))
