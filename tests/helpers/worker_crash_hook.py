"""A Ray ``worker_process_setup_hook`` for tests: reading any path that contains CRASH_MARK kills
the worker process with a real segmentation fault (a NULL read in native code through ctypes),
as a corrupt file can inside a C library. Installed only by tests, in their own Ray session."""
from __future__ import annotations

import ctypes
import os

CRASH_MARK = "__segfault__"


def install() -> None:
    from ecgbatch.io import api

    real = api.read_record

    def read_record(path, **options):
        if CRASH_MARK in os.fspath(path):
            ctypes.string_at(0)  # SIGSEGV
        return real(path, **options)

    api.read_record = read_record
