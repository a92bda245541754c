"""The cache of assembled model folders ($ECGBATCH_CACHE) when two processes assemble the same
folder at once (two test workers, two commands): ecgbatch.llava.base_models.assemble_atomically
keeps a complete folder that another process put in place meanwhile (it may be in use) and
replaces only an incomplete or corrupt one."""
from __future__ import annotations

import json
import multiprocessing as mp

from ecgbatch.llava.base_models import MARKER, assemble_atomically


def _quiet(msg):
    pass


def _writer(tag: bytes):
    def write(tmp):
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(tag * 1000)
    return write


def test_a_folder_another_process_completed_meanwhile_is_kept(tmp_path):
    dest = tmp_path / "m"

    def write_while_another_process_finishes_first(tmp):
        _writer(b"b")(tmp)
        other = mp.get_context("fork").Process(target=assemble_atomically,
                                               args=(dest, _writer(b"a"), "first", _quiet))
        other.start()
        other.join(60)
        assert other.exitcode == 0

    assert assemble_atomically(dest, write_while_another_process_finishes_first, "second", _quiet) == dest
    assert json.loads((dest / MARKER).read_text())["what"] == "first"
    assert (dest / "model.safetensors").read_bytes() == b"a" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["m"]          # no temporary folder left


def test_a_corrupt_folder_is_replaced(tmp_path):
    dest = tmp_path / "m"
    assemble_atomically(dest, _writer(b"a"), "first", _quiet)
    (dest / "model.safetensors").write_bytes(b"x" * 1000)         # same size, other bytes
    assert assemble_atomically(dest, _writer(b"b"), "second", _quiet) == dest
    assert json.loads((dest / MARKER).read_text())["what"] == "second"
    assert (dest / "model.safetensors").read_bytes() == b"b" * 1000
