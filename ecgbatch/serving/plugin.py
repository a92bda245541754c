"""vLLM plugin entry point (group ``vllm.general_plugins``, see pyproject.toml).

vLLM calls ``register()`` in every process it starts (the CPU platform spawns its engine), so it
must be idempotent and cheap: it registers the ``ecg_llava`` config type with transformers'
AutoConfig and the model class by its import path (imported only when a model needs it), and in
vLLM's engine-core process starts the watch that stops it when its parent dies
(ecgbatch.serving.parent_watch).
"""
from __future__ import annotations

from ecgbatch.serving.parent_watch import watch_parent

ARCHITECTURE = "EcgLlavaForConditionalGeneration"
MODEL_PATH = "ecgbatch.serving.ecg_llava_vllm:EcgLlavaForConditionalGeneration"


def register() -> None:
    """Make vLLM know ECG-LLaVA folders (config.json ``architectures``) in this process."""
    import ecgbatch.llava.configuration_ecg_llava as cfg   # registers AutoConfig at import
    from vllm import ModelRegistry

    cfg.register_auto_config()
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_PATH)
    watch_parent()


def entry_point_installed() -> bool:
    """Whether the installed ecgbatch distribution declares this plugin, so that the processes
    vLLM spawns register it too (an editable install made before the entry point existed does
    not: re-run ``pip install -e .``)."""
    from importlib.metadata import entry_points

    return any(ep.value == f"{__name__}:register" for ep in entry_points(group="vllm.general_plugins"))
