"""What a fresh clone on another machine needs: nothing tracked points outside the repo, and
nothing tracked is something ``.gitignore`` calls local."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from helpers import ROOT


def git(*args: str) -> str:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_no_tracked_link_leaves_the_repo():
    leaving = []
    for line in git("ls-files", "-s").splitlines():
        mode, _, _, name = line.split(maxsplit=3)
        if mode == "120000":
            target = (ROOT / name).parent / os.readlink(ROOT / name)
            if not target.resolve().is_relative_to(ROOT.resolve()):
                leaving.append(f"{name} -> {os.readlink(ROOT / name)}")
    assert leaving == []


def test_nothing_tracked_is_ignored():
    assert git("ls-files", "-ci", "--exclude-standard").split() == []
