"""Read hooks for tests, installed only in processes the tests start (Ray workers through
``worker_process_setup_hook``, fuzz children through ``sitehook/sitecustomize.py``): reading a
record whose path contains CRASH_MARK kills the process with a real segmentation fault (a NULL
read in native code through ctypes), as a corrupt file can inside a C library; HANG_MARK makes the
read never return."""
from __future__ import annotations

import ctypes
import time

CRASH_MARK = "__segfault__"
HANG_MARK = "__hang__"


def install() -> None:
    from ecgbatch.io.entries import RecordSource

    for name in ("read", "read_header"):
        real = getattr(RecordSource, name)

        def hooked(self, *args, _real=real, **kwargs):
            if CRASH_MARK in self.path:
                ctypes.string_at(0)  # SIGSEGV
            if HANG_MARK in self.path:
                time.sleep(3600)
            return _real(self, *args, **kwargs)

        setattr(RecordSource, name, hooked)
