"""``config.yaml`` as the worker manager sees it: its ``workers:`` list edited with a round-trip
YAML library (ruamel.yaml), so the user's comments, key order, flow or block style and ``${VAR}``
placeholders survive; and its changes, watched (watchfiles).

Every edit is checked by the engine's own parser before it is written, and written atomically
(a running engine that reloads on save never reads half a file).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, Optional

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, YAMLError
from ruamel.yaml.tokens import CommentToken
from ruamel.yaml.util import load_yaml_guess_indent
from watchfiles import Change, awatch

from iii.config import STARTER_CONFIG, ConfigError, parse_config

__all__ = ["add_worker_entry", "remove_worker_entry", "worker_entries", "file_changes"]


def worker_entries(path: Path) -> dict[str, Optional[str]]:
    """``name -> worker_path`` of every worker entry in the file (validated)."""
    config = parse_config(path.read_text(), path)
    return {w.name: w.worker_path for w in config.workers}


def _load(text: str, path: Path) -> tuple[YAML, CommentedMap]:
    """The document, and a YAML dumper set to the file's own indentation."""
    try:
        document, indent, dash_offset = load_yaml_guess_indent(text)
    except YAMLError as exc:  # a duplicate key included
        problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML: {problem or exc}{where}") from None
    if document is None:
        document = CommentedMap()
    if not isinstance(document, CommentedMap):
        raise ConfigError(f"{path}: the top level must be a mapping (workers: [...])")
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 1 << 16  # never fold a long line the user wrote on one
    if dash_offset is None or "\n- " not in text and "\n  - " in text:
        indent, dash_offset = 2, 2  # nothing to copy: `  - name:` as in the docs
    yaml.indent(mapping=indent or 2, sequence=(indent or 2) + dash_offset, offset=dash_offset)
    return yaml, document


def _write(path: Path, yaml: YAML, document: Any) -> None:
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    text = buffer.getvalue()
    parse_config(text, path)  # never write a file the engine would refuse
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(scratch, mode)
        os.replace(scratch, path)
    except BaseException:
        os.unlink(scratch)
        raise


def add_worker_entry(path: Path, name: str, worker_path: str) -> None:
    """Append ``{name: NAME, worker_path: PATH}`` to the ``workers`` list (created if absent).

    Raises:
        ConfigError: the file is not valid YAML, or the result would not be a valid config.
    """
    text = path.read_text() if path.exists() else STARTER_CONFIG
    yaml, document = _load(text, path)
    workers = document.get("workers")
    if workers is None:
        workers = document["workers"] = CommentedSeq()
    if not isinstance(workers, CommentedSeq):
        raise ConfigError(f"{path}: `workers` must be a list (write `workers: []` for none)")
    entry = CommentedMap([("name", name), ("worker_path", worker_path)])
    if not workers:
        workers.fa.set_block_style()  # `workers: []` grows into a list of one block per worker
    elif workers.fa.flow_style():
        entry.fa.set_flow_style()  # `[{name: a}, {name: b}]` stays on its line
    trailing = _detach_trailing_comment(workers)
    workers.append(entry)
    if trailing:  # what followed the list (a blank line, a comment) follows it still
        entry.ca.items["worker_path"] = [None, None, CommentToken("\n" + trailing, CommentMark(0), None), None]
    _write(path, yaml, document)


def _detach_trailing_comment(node: Any) -> str:
    """Take the blank lines and comments after ``node``'s last value off it and return them.

    ruamel.yaml keeps them with the deepest last value, so an item appended after it would come
    after them (``# next section`` would end up above the new worker). An end-of-line comment on
    that value's own line stays where it is.
    """
    if isinstance(node, CommentedMap) and node:
        last: Any = list(node)[-1]
        slot = 2
    elif isinstance(node, CommentedSeq) and node:
        last, slot = len(node) - 1, 0
    else:
        return ""
    child = node[last]
    if isinstance(child, (CommentedMap, CommentedSeq)):
        inner = _detach_trailing_comment(child)
        if inner:
            return inner
    item = node.ca.items.get(last)
    token = item[slot] if item and len(item) > slot else None
    if token is None or "\n" not in token.value:
        return ""
    own_line, _, after = token.value.partition("\n")
    if own_line:
        token.value = own_line + "\n"
    else:
        item[slot] = None
    return after


def remove_worker_entry(path: Path, name: str) -> bool:
    """Delete the worker entry called ``name``; ``False`` if there was none.

    Raises:
        ConfigError: the file is not valid YAML, or the result would not be a valid config.
    """
    yaml, document = _load(path.read_text(), path)
    for section in ("workers", "modules"):
        entries = document.get(section)
        if not isinstance(entries, CommentedSeq):
            continue
        for index, entry in enumerate(entries):
            if isinstance(entry, dict) and entry.get("name") == name:
                del entries[index]
                if not entries:
                    entries.fa.set_flow_style()  # an empty block list reads as `workers: []`
                _write(path, yaml, document)
                return True
    return False


async def file_changes(path: Path) -> AsyncIterator[None]:
    """Yields once per burst of changes to the file ``path`` (saved, replaced or recreated).

    Its directory is watched, not recursively, so an editor's or :func:`add_worker_entry`'s
    write-then-rename is seen too.
    """
    target = str(path.resolve())

    def is_target(change: Change, changed: str) -> bool:
        return changed == target and change != Change.deleted

    async for _ in awatch(os.path.dirname(target), watch_filter=is_target, recursive=False):
        yield
