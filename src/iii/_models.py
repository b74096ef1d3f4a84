"""The base of the SDK's data models: msgspec Structs that answer the pydantic calls user code
makes on the official SDK's models (``model_dump``, ``model_validate``, ``model_json_schema``),
so the official names work here without pydantic."""

from __future__ import annotations

import copy
from typing import Any, TypeVar

import msgspec

__all__ = ["Model"]

M = TypeVar("M", bound="Model")


def _without_none(value: Any) -> Any:
    """``value`` as builtins with the ``None`` fields of its models left out, as pydantic's
    ``exclude_none`` does: a ``None`` inside plain data (a dict value, a list item) is kept."""
    if isinstance(value, msgspec.Struct):
        return {
            field.encode_name: _without_none(getattr(value, field.name))
            for field in msgspec.structs.fields(value)
            if getattr(value, field.name) is not None
        }
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_none(v) for v in value]
    return msgspec.to_builtins(value)


class _KeywordOnly(type(msgspec.Struct)):  # type: ignore[misc]
    """Every model is built by keyword, as pydantic models are (so field order is free)."""

    def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **options: Any) -> Any:
        options.setdefault("kw_only", True)
        return super().__new__(mcls, name, bases, namespace, **options)


class Model(msgspec.Struct, metaclass=_KeywordOnly):
    """A keyword-built Struct with the pydantic methods SDK users call."""

    def model_dump(self, *, exclude_none: bool = False, **_options: Any) -> dict[str, Any]:
        """The model as plain JSON-ready values, by wire name (``exclude_none`` drops ``None``s)."""
        return _without_none(self) if exclude_none else msgspec.to_builtins(self)

    def model_dump_json(self, *, exclude_none: bool = False, **_options: Any) -> str:
        return msgspec.json.encode(self.model_dump(exclude_none=exclude_none)).decode()

    def model_copy(self: M, *, deep: bool = False, update: dict[str, Any] | None = None) -> M:
        copied = copy.deepcopy(self) if deep else copy.copy(self)
        for name, value in (update or {}).items():
            setattr(copied, name, value)
        return copied

    @classmethod
    def model_validate(cls: type[M], obj: Any) -> M:
        """Build from a dict (or another model) by wire name; raises ``msgspec.ValidationError``."""
        if isinstance(obj, cls):
            return obj
        if isinstance(obj, msgspec.Struct):
            obj = msgspec.to_builtins(obj)
        return msgspec.convert(obj, cls)

    @classmethod
    def model_json_schema(cls) -> dict[str, Any]:
        from iii.format_utils import schema_of

        return schema_of(cls)  # type: ignore[return-value]
