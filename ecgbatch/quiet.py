"""Quiet by default: what vLLM, torch and Ray print that an ecgbatch user cannot act on is dropped
unless ``--verbose`` (``report``, ``chat``, ``serve``, ``embed``); what matters is said once, by
ecgbatch (``cpu_backend_notice``). Imports only the standard library: vLLM's processes load
``NoiseFilter`` by name.

A command calls ``set_verbosity(verbose)`` first; ECGBATCH_QUIET carries the choice to the
processes it starts ("1" quiet, "0" --verbose; unset: library use, the libraries' own defaults).
The messages come from this process and from the ones vLLM and Ray start, so each kind is quieted
where it is made:
- vLLM's logger, in every vLLM process: VLLM_LOGGING_CONFIG_PATH names a logging config whose
  handler carries NoiseFilter. vLLM applies it in each process once it configures its logging;
  ``inherit`` applies it earlier, before vLLM's import-time checks log (Triton): here, and in a
  spawned engine process or Ray worker, which imports ecgbatch (its ``__init__`` calls
  ``inherit``) before vLLM.
- Python warnings (torch's ``reduce_op`` FutureWarning in vLLM's workers): PYTHONWARNINGS.
- torch's C++ warnings (the NUMA binding note of vLLM's CPU worker): TORCH_CPP_LOG_LEVEL=ERROR.
- the weights' loading bar: vLLM's ``use_tqdm_on_load`` (ecgbatch.serving.engine asks ``is_quiet``).
- Ray workers' output reaches the terminal only with --verbose (ecgbatch.pipelines.ray_common).
Settings the user made (VLLM_LOGGING_LEVEL, VLLM_LOGGING_CONFIG_PATH, TORCH_CPP_LOG_LEVEL) win.
"""
from __future__ import annotations

import hashlib
import json
import logging
import logging.config
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

QUIET_ENV = "ECGBATCH_QUIET"

# Substrings of the log messages dropped in quiet mode: none asks anything of an ecgbatch user
# (the LD_PRELOAD ones are said once, in one line, by cpu_backend_notice).
NOISE = (
    "Triton is installed, but doesn't include CPU backend",
    "Triton is not installed. triton-cpu is expected",
    "Model Runner V2 requires Triton",
    "Enforce eager set, disabling torch.compile",
    "Inductor compilation was disabled by user settings",
    "Model does not support mm_device_do_normalize",
    "is not found in LD_PRELOAD",
    "doesn't allow to use `torch.set_num_threads` after the thread binding",
    "deprecated support for supporting different tokenizers for different LoRAs",
    "is set; leaving Torch threads at",     # OMP_NUM_THREADS from ecgbatch's CPU thread binding
    "Reset SSM cache type to float32",      # vLLM's CPU platform, for Mamba layers: ECG-LLaVA has none
)
# Python warnings dropped in quiet mode: (start of the message, category)
PY_WARNINGS = (("`torch.distributed.reduce_op` is deprecated", FutureWarning),)
VLLM_FORMAT = "(%(processName)s pid=%(process)d) %(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s"


class NoiseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(n in msg for n in NOISE)


def is_quiet() -> bool:
    """A command without --verbose started this process or its parent (ECGBATCH_QUIET=1)."""
    return os.environ.get(QUIET_ENV) == "1"


def is_verbose() -> bool:
    """A command was given --verbose (ECGBATCH_QUIET=0)."""
    return os.environ.get(QUIET_ENV) == "0"


def logging_config(level: str, stream: str) -> dict:
    """vLLM's logger config (as vLLM's default: one stream handler, no propagation) with
    NoiseFilter on its handler."""
    return {
        "version": 1, "disable_existing_loggers": False,
        "filters": {"ecgbatch_noise": {"()": f"{__name__}.NoiseFilter"}},
        "formatters": {"vllm": {"format": VLLM_FORMAT, "datefmt": "%m-%d %H:%M:%S"}},
        "handlers": {"vllm": {"class": "logging.StreamHandler", "formatter": "vllm", "level": level,
                              "stream": stream, "filters": ["ecgbatch_noise"]}},
        "loggers": {"vllm": {"handlers": ["vllm"], "level": level, "propagate": False}},
    }


def write_logging_config(config: dict) -> Path:
    """The config as a JSON file named by its content (written atomically; shared by runs)."""
    text = json.dumps(config, sort_keys=True, indent=1)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"ecgbatch-vllm-logging-{digest}.json"
    if not path.exists():
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return path


def set_verbosity(verbose: bool) -> None:
    """What a command does first (before vLLM, torch or Ray are imported): quiet this process and
    the ones it starts, or with ``verbose`` let everything through (this also ends the quiet mode
    of an earlier command run in the same process, as the demo does)."""
    os.environ[QUIET_ENV] = "0" if verbose else "1"
    if verbose:
        return
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")   # stdout is the commands' output
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    entries = [e for e in os.environ.get("PYTHONWARNINGS", "").split(",") if e]
    ours = [f"ignore:{msg}:{cat.__name__}" for msg, cat in PY_WARNINGS]
    os.environ["PYTHONWARNINGS"] = ",".join(entries + [e for e in ours if e not in entries])
    if "VLLM_LOGGING_CONFIG_PATH" not in os.environ:
        config = logging_config(os.environ["VLLM_LOGGING_LEVEL"].upper(), os.environ["VLLM_LOGGING_STREAM"])
        os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(write_logging_config(config))
    inherit()


def inherit() -> None:
    """Apply quiet mode in this process when a quiet command set it: the Python warning filters,
    and vLLM's logger config before vLLM logs anything."""
    if not is_quiet():
        return
    for msg, cat in PY_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(msg), category=cat)
    path = os.environ.get("VLLM_LOGGING_CONFIG_PATH")
    if path and Path(path).is_file():
        try:
            logging.config.dictConfig(json.loads(Path(path).read_text(encoding="utf-8")))
        except (ValueError, TypeError, ImportError, OSError):
            pass   # a config of the user's that needs vLLM loaded: vLLM applies it itself


_said: set[str] = set()


def cpu_backend_notice(on_gpu: bool, say=None) -> None:
    """Once per process, on CPU in quiet mode: the one thing vLLM's CPU warnings ask of a user
    (preload tcmalloc and Intel OpenMP for speed), in one line on stderr (or to ``say``)."""
    if on_gpu or not is_quiet() or not sys.platform.startswith("linux") or "cpu_backend" in _said:
        return
    missing = [lib for lib in ("libtcmalloc", "libiomp") if lib not in os.environ.get("LD_PRELOAD", "")]
    if not missing:
        return
    _said.add("cpu_backend")
    (say or (lambda m: print(m, file=sys.stderr, flush=True)))(
        f"vLLM CPU backend: no {' or '.join(missing)} in LD_PRELOAD, generation is slower "
        "(https://docs.vllm.ai/en/latest/getting_started/installation/cpu/); --verbose shows vLLM's warnings")
