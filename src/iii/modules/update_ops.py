"""``UpdateOp``: the in-place edits ``state::update`` applies, in order, to a stored value.

Each op is ``{"type": set|merge|increment|decrement|append|remove, "path"?, "value"?, "by"?}``.
A failing op does not stop the others: it is reported as ``{op_index, code, message}``.
"""

from __future__ import annotations

from typing import Any, Optional, Union

__all__ = ["apply_ops", "prepare_ops"]

_MAX_PATH_SEGMENTS = 32
_MAX_SEGMENT_BYTES = 256
_MAX_VALUE_DEPTH = 16
_MAX_VALUE_KEYS = 1024
_POLLUTING_KEYS = frozenset({"__proto__", "constructor", "prototype"})


class OpError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def apply_ops(value: Any, ops: Any) -> tuple[Any, list[dict[str, Any]]]:
    """Apply ``ops`` to ``value`` (absent = ``{}``); returns the new value and the op errors.

    ``value`` is modified in place where it is a container: pass a value you own.
    """
    if value is None:
        value = {}
    errors: list[dict[str, Any]] = []
    if not isinstance(ops, list):
        ops = [ops]
    for index, op in enumerate(ops):
        try:
            value = _apply(value, op)
        except OpError as exc:
            errors.append({"op_index": index, "code": exc.code, "message": exc.message})
    return value, errors


def _apply(root: Any, op: Any) -> Any:
    if not isinstance(op, dict) or not isinstance(op.get("type"), str):
        raise OpError("op.invalid", "an op is an object with a string `type`")
    kind = op["type"]
    path = op.get("path")
    if kind == "set":
        if _is_root(path):
            return op.get("value")
        _object_root(root, kind)[_key(path, kind)] = op.get("value")
        return root
    if kind in ("increment", "decrement"):
        by = op.get("by", 1)
        if isinstance(by, bool) or not isinstance(by, int):
            raise OpError(f"{kind}.by.not_integer", f"`by` must be an integer, got {by!r}")
        delta = by if kind == "increment" else -by
        if _is_root(path):
            return _add(root, delta, kind)
        target = _object_root(root, kind)
        key = _key(path, kind)
        target[key] = _add(target[key], delta, kind) if key in target else delta
        return root
    if kind == "remove":
        if _is_root(path):
            return None
        _object_root(root, kind).pop(_key(path, kind), None)
        return root
    if kind == "merge":
        patch = op.get("value")
        if not isinstance(patch, dict):
            raise OpError("merge.value.not_an_object", "merge needs an object `value`")
        _check_merge_value(patch)
        target = _walk(_object_root(root, kind), _segments(path, kind), create=True, kind=kind)
        target.update(patch)
        return root
    if kind == "append":
        item = op.get("value")
        segments = _segments(path, kind)
        if not segments:
            return _append(root, item, kind, missing=False)
        parent = _walk(_object_root(root, kind), segments[:-1], create=True, kind=kind)
        last = segments[-1]
        parent[last] = _append(parent.get(last), item, kind, missing=last not in parent)
        return root
    raise OpError("op.unknown_type", f"unknown op type {kind!r} (set, merge, increment, decrement, append, remove)")


def prepare_ops(ops: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Check ``ops`` as far as that needs no value, for a store that applies them where the value
    is (the Redis script of :mod:`iii.modules._redis_stores`); returns the prepared ops and the
    errors found.

    Each op keeps its index: a refused one becomes ``{"type": "noop"}``. An error that
    :func:`apply_ops` reports only once the value is an object (a bad ``path`` of set, increment,
    decrement, remove and merge) travels as ``post: {code, message}``, for the store to report
    after that check, so both report the same error for the same op and value. Prepared shapes:
    ``set {root, key?, value}``, ``increment|decrement {root, key?, by}`` (``by`` already negated
    for decrement), ``remove {root, key?}``, ``merge {segments?, value}``,
    ``append {segments, value}``.
    """
    if not isinstance(ops, list):
        ops = [ops]
    prepared: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for index, op in enumerate(ops):
        try:
            prepared.append(_prepare(op))
        except OpError as exc:
            errors.append({"op_index": index, "code": exc.code, "message": exc.message})
            prepared.append({"type": "noop"})
    return prepared, errors


def _prepare(op: Any) -> dict[str, Any]:
    """One op of :func:`prepare_ops`, its checks in :func:`_apply`'s order."""
    if not isinstance(op, dict) or not isinstance(op.get("type"), str):
        raise OpError("op.invalid", "an op is an object with a string `type`")
    kind = op["type"]
    path = op.get("path")
    if kind == "set":
        return _keyed({"type": kind, "value": op.get("value")}, path, kind)
    if kind in ("increment", "decrement"):
        by = op.get("by", 1)
        if isinstance(by, bool) or not isinstance(by, int):
            raise OpError(f"{kind}.by.not_integer", f"`by` must be an integer, got {by!r}")
        return _keyed({"type": kind, "by": by if kind == "increment" else -by}, path, kind)
    if kind == "remove":
        return _keyed({"type": kind}, path, kind)
    if kind == "merge":
        patch = op.get("value")
        if not isinstance(patch, dict):
            raise OpError("merge.value.not_an_object", "merge needs an object `value`")
        _check_merge_value(patch)
        merge: dict[str, Any] = {"type": kind, "value": patch}
        try:
            merge["segments"] = _segments(path, kind)
        except OpError as exc:
            merge["post"] = {"code": exc.code, "message": exc.message}
        return merge
    if kind == "append":
        return {"type": kind, "segments": _segments(path, kind), "value": op.get("value")}
    raise OpError("op.unknown_type", f"unknown op type {kind!r} (set, merge, increment, decrement, append, remove)")


def _keyed(prepared: dict[str, Any], path: Any, kind: str) -> dict[str, Any]:
    prepared["root"] = _is_root(path)
    if not prepared["root"]:
        try:
            prepared["key"] = _key(path, kind)
        except OpError as exc:
            prepared["post"] = {"code": exc.code, "message": exc.message}
    return prepared


def _is_root(path: Any) -> bool:
    return path is None or path == "" or path == []


def _key(path: Any, kind: str) -> str:
    """Ops other than merge and append take one top-level key (no dot traversal)."""
    if not isinstance(path, str):
        raise OpError(f"{kind}.path.invalid", f"`path` must be a string key, got {path!r}")
    return path


def _object_root(root: Any, kind: str) -> dict[str, Any]:
    if not isinstance(root, dict):
        raise OpError(f"{kind}.target_not_object", f"{kind} with a path needs an object value")
    return root


def _segments(path: Any, kind: str) -> list[str]:
    """A merge/append path: absent or ``""`` (root), a key, or a list of literal segments."""
    if _is_root(path):
        return []
    segments: Union[list[Any], Any] = [path] if isinstance(path, str) else path
    if not isinstance(segments, list) or not all(isinstance(s, str) for s in segments):
        raise OpError(f"{kind}.path.invalid", "`path` must be a key or a list of keys")
    if len(segments) > _MAX_PATH_SEGMENTS:
        raise OpError(f"{kind}.path.too_deep", f"`path` has more than {_MAX_PATH_SEGMENTS} segments")
    for segment in segments:
        if not segment:
            raise OpError(f"{kind}.path.empty_segment", "`path` has an empty segment")
        if len(segment.encode()) > _MAX_SEGMENT_BYTES:
            raise OpError(f"{kind}.path.segment_too_long", f"a `path` segment is longer than {_MAX_SEGMENT_BYTES} bytes")
        if segment in _POLLUTING_KEYS:
            raise OpError(f"{kind}.path.proto_polluted", f"`path` may not use {segment!r}")
    return segments


def _walk(node: dict[str, Any], segments: list[str], *, create: bool, kind: str) -> dict[str, Any]:
    for segment in segments:
        child = node.get(segment)
        if child is None and create:
            child = node[segment] = {}
        if not isinstance(child, dict):
            raise OpError(f"{kind}.target_not_object", f"`{segment}` is not an object")
        node = child
    return node


def _add(current: Any, delta: int, kind: str) -> Union[int, float]:
    if isinstance(current, bool) or not isinstance(current, (int, float)):
        raise OpError(f"{kind}.not_number", f"{kind} needs a number, found {type(current).__name__}")
    return current + delta


def _append(current: Any, item: Any, kind: str, *, missing: bool) -> Any:
    if missing or current is None:
        return item if isinstance(item, str) else [item]
    if isinstance(current, list):
        current.append(item)
        return current
    if isinstance(current, str) and isinstance(item, str):
        return current + item
    raise OpError("append.type_mismatch", "append needs an array, or a string and a string value")


def _check_merge_value(value: Any, depth: int = 1, counted: Optional[list[int]] = None) -> None:
    counted = [0] if counted is None else counted
    if depth > _MAX_VALUE_DEPTH:
        raise OpError("merge.value.too_deep", f"`value` nests deeper than {_MAX_VALUE_DEPTH} levels")
    if isinstance(value, dict):
        counted[0] += len(value)
        if counted[0] > _MAX_VALUE_KEYS:
            raise OpError("merge.value.too_many_keys", f"`value` has more than {_MAX_VALUE_KEYS} keys")
        for key, child in value.items():
            if key in _POLLUTING_KEYS:
                raise OpError("merge.value.proto_polluted", f"`value` may not use the key {key!r}")
            _check_merge_value(child, depth + 1, counted)
    elif isinstance(value, list):
        for child in value:
            _check_merge_value(child, depth + 1, counted)
