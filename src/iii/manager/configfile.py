"""Editing the ``workers:`` list of ``config.yaml`` as text, so the user's comments survive."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import yaml

from iii.config import STARTER_CONFIG, parse_config

__all__ = ["add_worker_entry", "remove_worker_entry", "worker_entries"]

_WORKERS_KEY = re.compile(r"^workers:[ \t]*(#.*)?$")
_EMPTY_FLOW = re.compile(r"^workers:[ \t]*\[[ \t]*\][ \t]*(#.*)?$")
_TOP_LEVEL = re.compile(r"^[^\s#-]")
_ITEM = re.compile(r"^(?P<indent>[ \t]*)-[ \t]+name:[ \t]*(?P<name>[^\s#]+)")


def worker_entries(path: Path) -> dict[str, Optional[str]]:
    """``name -> worker_path`` of every worker entry in the file (validated)."""
    config = parse_config(path.read_text(), path)
    return {w.name: w.worker_path for w in config.workers}


def _entry_text(name: str, worker_path: str, indent: str = "  ") -> list[str]:
    return [f"{indent}- name: {name}\n", f"{indent}  worker_path: {yaml.safe_dump(worker_path).splitlines()[0]}\n"]


def add_worker_entry(path: Path, name: str, worker_path: str) -> None:
    """Append ``- name: NAME / worker_path: PATH`` to the ``workers`` list."""
    text = path.read_text() if path.exists() else STARTER_CONFIG
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    for index, line in enumerate(lines):
        if _EMPTY_FLOW.match(line):
            comment = line.split("#", 1)[1] if "#" in line else None
            lines[index] = "workers:" + (f" #{comment}" if comment else "\n")
            lines[index + 1 : index + 1] = _entry_text(name, worker_path)
            break
        if _WORKERS_KEY.match(line):
            end = index + 1
            indent = "  "
            for later in range(index + 1, len(lines)):
                if _TOP_LEVEL.match(lines[later]):
                    break
                item = _ITEM.match(lines[later])
                if item:
                    indent = item.group("indent")
                if lines[later].strip():
                    end = later + 1
            lines[end:end] = _entry_text(name, worker_path, indent)
            break
    else:
        lines += ["workers:\n", *_entry_text(name, worker_path)]
    new_text = "".join(lines)
    parse_config(new_text, path)  # never write a file the engine would refuse
    path.write_text(new_text)


def remove_worker_entry(path: Path, name: str) -> bool:
    """Delete the entry called ``name``; ``False`` if there was none."""
    lines = path.read_text().splitlines(keepends=True)
    for index, line in enumerate(lines):
        item = _ITEM.match(line)
        if not item or item.group("name").strip("'\"") != name:
            continue
        indent = len(item.group("indent"))
        end = index + 1
        while end < len(lines):
            following = lines[end]
            stripped = following.strip()
            if stripped and (len(following) - len(following.lstrip()) <= indent):
                break
            end += 1
        while end - 1 > index and not lines[end - 1].strip():
            end -= 1  # blank lines after the entry separate sections: keep them
        del lines[index:end]
        _mark_empty_list(lines)
        new_text = "".join(lines)
        parse_config(new_text, path)
        path.write_text(new_text)
        return True
    return False


def _mark_empty_list(lines: list[str]) -> None:
    """A ``workers:`` block left with no items becomes ``workers: []`` (a bare key is null)."""
    for index, line in enumerate(lines):
        if not _WORKERS_KEY.match(line):
            continue
        for later in lines[index + 1 :]:
            if _TOP_LEVEL.match(later):
                break
            if later.strip() and not later.strip().startswith("#"):
                return
        lines[index] = line.replace("workers:", "workers: []", 1)
        return
