"""Imported at start-up by Python processes that have this folder on PYTHONPATH (fuzz children
started by tests): installs the crash/hang read hooks when ECGBATCH_TEST_READ_HOOK=1."""
import os
import sys

if os.environ.get("ECGBATCH_TEST_READ_HOOK") == "1":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from worker_crash_hook import install

    install()
