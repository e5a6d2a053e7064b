"""Directories replaced whole: a model export or a checkpoint is written under a temporary
name beside its place, then renamed into it, so a reader never finds half of one. Also the path
checks that guard such writes (`within`, `holds_working_directory`, `blocking_file`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def within(path: Path, directory: Path) -> bool:
    """Whether `path` is `directory` or lies inside it (both as given: resolve them first)."""
    return path == directory or directory in path.parents


def holds_working_directory(path: Path) -> bool:
    """Whether `path` is the working directory or holds it (replacing it would remove it)."""
    return within(Path.cwd().resolve(), path.resolve())


def blocking_file(path: Path) -> Path | None:
    """The file among `path` and its parents that is in the way of making `path` a directory or
    writing a file under it (the nearest that exists, if it is no directory); None if none."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    return existing if existing is not None and not existing.is_dir() else None


def replace_dir_atomically(tmp: Path, final: Path) -> None:
    """Move a fully written directory `tmp` to `final`, replacing what was there."""
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
