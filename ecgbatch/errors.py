"""The one base of ecgbatch's typed errors.

Every package's errors derive from ``EcgbatchError`` and carry a ``kind`` (a short snake_case
name that tables and logs record); where an API promised a builtin (``ValueError``,
``RuntimeError``) that is the second base, so ``except ValueError`` keeps working. The command
line prints any of them one way (``ecgbatch.commands.common.fail``). Imports nothing.
"""
from __future__ import annotations


class EcgbatchError(Exception):
    """Base class of every error ecgbatch raises on purpose."""

    kind = "error"
