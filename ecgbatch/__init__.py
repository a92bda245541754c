"""ecgbatch: run ECG-language models (ECG-Chat's ECG-CoCa and ECG-LLaVA) over whole ECG archives.

Heavy libraries (torch, ray, faiss, vllm) are imported lazily by the submodules that need them;
importing ``ecgbatch`` itself is cheap.
"""

import os

__version__ = "0.1.0"

if os.environ.get("ECGBATCH_QUIET") == "1":   # a process a quiet command started (vLLM's engine,
    from ecgbatch.quiet import inherit        # a Ray worker): quiet before vLLM's import-time
    inherit()                                 # checks log (ecgbatch.quiet)

__all__ = ["__version__", "read_record", "scan"]


def __getattr__(name):  # lazy curated API
    if name in ("read_record", "scan"):
        from ecgbatch import io

        return getattr(io, name)
    raise AttributeError(f"module 'ecgbatch' has no attribute {name!r}")
