"""The user's own Python named in a config (``python:package.module:function`` rewards): found
in the working directory as well as on the import path, under the `rlhfkit` command as under
``python -m rlhfkit`` (which puts the working directory first on the path)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType


def _with_working_directory() -> None:
    """Let modules in the working directory be imported: it goes last on ``sys.path``, so it
    never shadows an installed package."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)


def import_user_module(name: str) -> ModuleType:
    """``importlib.import_module(name)``, the working directory included."""
    _with_working_directory()
    return importlib.import_module(name)


def find_user_module(name: str) -> ModuleSpec | None:
    """``importlib.util.find_spec(name)``, the working directory included."""
    _with_working_directory()
    return importlib.util.find_spec(name)
