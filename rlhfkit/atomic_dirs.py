"""Directories replaced whole: a model export or a checkpoint is written under a temporary
name beside its place, then renamed into it, so a reader never finds half of one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def replace_dir_atomically(tmp: Path, final: Path) -> None:
    """Move a fully written directory `tmp` to `final`, replacing what was there."""
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
