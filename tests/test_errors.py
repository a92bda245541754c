"""One error base (ecgbatch.errors.EcgbatchError) under every package's typed errors, each with a
``kind``, the builtin bases the APIs promised kept; one `fail()` that prints them."""
from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from ecgbatch.errors import EcgbatchError


def _package_errors():
    from ecgbatch.encoders.errors import CheckpointMismatchError, CheckpointReadError
    from ecgbatch.index.errors import GpuUnavailableError, IndexModelMismatchError, UnknownColumnError
    from ecgbatch.io.errors import TruncatedSignalError, UnknownFormatError
    from ecgbatch.pipelines.workspace import WorkspaceLockedError
    from ecgbatch.training.pairs import PairBuildError
    from ecgbatch.training.texts import TextSourceError

    return {  # error class -> the builtin its API promised (None: plain Exception)
        TruncatedSignalError: None, UnknownFormatError: None,
        CheckpointReadError: ValueError, CheckpointMismatchError: ValueError,
        IndexModelMismatchError: None, UnknownColumnError: ValueError, GpuUnavailableError: RuntimeError,
        WorkspaceLockedError: RuntimeError, PairBuildError: ValueError, TextSourceError: ValueError,
    }


def test_every_package_error_is_an_ecgbatch_error_with_a_kind():
    kinds = set()
    for cls, builtin in _package_errors().items():
        assert issubclass(cls, EcgbatchError), cls
        if builtin is not None:
            assert issubclass(cls, builtin), cls
        assert cls.kind != EcgbatchError.kind and cls.kind.replace("_", "").isalnum(), cls
        kinds.add(cls.kind)
    assert len(kinds) == len(_package_errors())          # each kind names one thing


def test_fail_prints_kind_and_message_and_exits_2(tmp_path):
    from ecgbatch.commands.common import fail
    from ecgbatch.io import read_record
    from ecgbatch.io.errors import EcgReadError

    app = typer.Typer()

    @app.command()
    def read(path: str) -> None:
        try:
            read_record(path)
        except EcgReadError as exc:
            fail(exc)

    @app.command()
    def plain() -> None:
        fail("no such thing", code=3)

    bad = tmp_path / "x.hea"
    bad.write_text("not a header\n")
    r = CliRunner().invoke(app, ["read", str(bad)])
    assert r.exit_code == 2
    with pytest.raises(EcgReadError) as info:
        read_record(str(bad))
    assert r.output.strip() == f"error: {info.value.kind}: {info.value}"
    r = CliRunner().invoke(app, ["plain"])
    assert r.exit_code == 3 and r.output.strip() == "error: no such thing"
