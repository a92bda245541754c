"""What every command shares: one way to stop with an error."""
from __future__ import annotations

from typing import NoReturn

import typer

from ecgbatch.errors import EcgbatchError


def error_text(error: str | BaseException) -> str:
    """``kind: message`` for a typed ecgbatch error, the message otherwise."""
    if isinstance(error, EcgbatchError) and error.kind != EcgbatchError.kind:
        return f"{error.kind}: {error}"
    return str(error)


def fail(error: str | BaseException, code: int = 2) -> NoReturn:
    """Print ``error: ...`` on stderr and exit with ``code`` (2: the input was refused)."""
    typer.secho(f"error: {error_text(error)}", fg="red", err=True)
    raise typer.Exit(code)
