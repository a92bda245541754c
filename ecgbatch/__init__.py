"""ecgbatch: run ECG-language models (ECG-Chat's ECG-CoCa and ECG-LLaVA) over whole ECG archives.

Heavy libraries (torch, ray, faiss, vllm) are imported lazily by the submodules that need them;
importing ``ecgbatch`` itself is cheap.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "read_record", "scan"]


def __getattr__(name):  # lazy curated API
    if name in ("read_record", "scan"):
        from ecgbatch import io

        return getattr(io, name)
    raise AttributeError(f"module 'ecgbatch' has no attribute {name!r}")
