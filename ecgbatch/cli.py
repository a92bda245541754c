"""The `ecgbatch` command line. Thin: each command group lives in ecgbatch/commands/ and imports
its heavy dependencies inside the command body, so `ecgbatch --help` stays fast."""
from __future__ import annotations

import importlib

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Run ECG-language models (ECG-CoCa, ECG-LLaVA) over whole ECG archives.")



@app.callback()
def _root() -> None:
    """Run ECG-language models (ECG-CoCa, ECG-LLaVA) over whole ECG archives."""


# Each module exposes register(app). Order = order in --help.
_COMMAND_MODULES = ("io", "inspect", "models", "train", "evaluate", "data", "archive", "report", "chat",
                    "serve", "status")
for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"ecgbatch.commands.{_name}")
    except ModuleNotFoundError as exc:  # a command group not written yet
        if exc.name != f"ecgbatch.commands.{_name}":
            raise
        continue
    _mod.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
