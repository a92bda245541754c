"""The diagnosis-driven prompt (the paper's DDP) in ECG-LLaVA training data
(``data.diagnosis_prompt``, alias ``data.ddp``, of configs/llava-*.yaml).

A seeded fraction of the job's report items (``meta.kind == "report"``) gets its question
rewritten as at inference with ``--ddp`` (``ecgbatch.llava.diagnosis_prompt.diagnosis_prompt``): the
findings of the tower's encoder's calibrated probes on the item's own ECG, then the question. Only the human
turn changes, so the loss masking is untouched (answers stay labelled, prompts masked). The
encoder's embedding of each record is computed once and cached like the tower tokens
(``<cache_dir>/ddp_embeddings-<encoder weights sha>-<preprocess sha>.npz``, keyed by the record
file); the probes are applied to it each run (cheap, and a refitted probe needs no recompute).

Caveat: ecg-coca-mini's shipped probes were fitted on all 477 records of ../shared/data, so on
those records the training prompts state findings better than the probes would on unseen ECGs.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from ecgbatch.llava.diagnosis_prompt import diagnosis_prompt, findings_from_embeddings

SEED_SALT = 13


def diagnosis_prompt_selection(items, fraction: float, seed: int) -> list[int]:
    """Indices (sorted) of the report items that get a diagnosis-prompt question: round(fraction x reports),
    drawn with a generator seeded by (seed, 13), so the same job picks the same items."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"data.diagnosis_prompt (data.ddp) must be a fraction in [0, 1], got {fraction!r}")
    reports = [i for i, it in enumerate(items) if it.meta.get("kind") == "report"]
    k = int(round(fraction * len(reports)))
    pick = np.random.default_rng([seed, SEED_SALT]).permutation(len(reports))[:k]
    return sorted(reports[int(j)] for j in pick)


def placed_like(question: str, like: str, ecg_token: str) -> str:
    """``question`` with the ECG placeholder where the human turn ``like`` has it: at the end when
    ``like`` ends with it (and does not start with it), else at the start."""
    at_end = like.rstrip().endswith(ecg_token) and not like.lstrip().startswith(ecg_token)
    return f"{question}\n{ecg_token}" if at_end else f"{ecg_token}\n{question}"


def ask_first_turn(item, rewrite: Callable[[str], str], ecg_token: str, meta: dict):
    """A copy of ``item`` whose first human turn asks ``rewrite(question)`` (the placeholder kept
    where it was, at the start or the end), ``meta`` merged into its meta. Only the human turn
    changes, so the loss masking is untouched."""
    conv = [dict(t) for t in item.conversations]
    first = conv[0]["value"]
    conv[0]["value"] = placed_like(rewrite(first.replace(ecg_token, "").strip()), first, ecg_token)
    return replace(item, conversations=conv, meta={**item.meta, **meta})


def with_diagnosis_prompt(item, findings, ecg_token: str = "<ecg>"):
    """A copy of ``item`` whose first human turn asks the DDP question; ``meta.ddp`` records the
    findings."""
    return ask_first_turn(item, lambda q: diagnosis_prompt(q, findings), ecg_token,
                          {"ddp": [f.to_dict() for f in findings]})


def embedding_cache_file(cache_dir: str | Path, labeller, config) -> Path:
    from ecgbatch.training.ecg_tokens import preprocess_hash

    return Path(cache_dir) / f"ddp_embeddings-{labeller.weights_hash}-{preprocess_hash(config)}.npz"


def record_embeddings(labeller, paths: list[str], read: Callable[[str], np.ndarray], cache_dir, config,
                      log=None) -> np.ndarray:
    """The encoder embeddings [N, D] of the records ``paths`` (``read(path)`` -> the model's
    input), cached per record."""
    from ecgbatch.training.ecg_tokens import cached_rows, record_key

    return cached_rows(embedding_cache_file(cache_dir, labeller, config), [record_key(p) for p in paths],
                       lambda idx: labeller.embed(np.stack([read(paths[i]) for i in idx])),
                       batch_size=32, what=f"DDP embeddings ({labeller.encoder})", log=log)


def record_findings(labeller, paths: list[str], read: Callable[[str], np.ndarray], cache_dir, config,
                    log=None) -> list:
    """DDP findings of each record ``paths[i]``, from the encoder embeddings cached per record."""
    return findings_from_embeddings(labeller.probes, record_embeddings(labeller, paths, read, cache_dir, config, log))


def apply_diagnosis_prompts(items, fraction: float, seed: int, labeller, read, cache_dir, config, log=print):
    """(items with the chosen report items rewritten, number rewritten)."""
    chosen = diagnosis_prompt_selection(items, fraction, seed)
    if not chosen:
        return list(items), 0
    paths = sorted({str(items[i].ecg_path) for i in chosen})
    by_path = dict(zip(paths, record_findings(labeller, paths, read, cache_dir, config, log)))
    out = list(items)
    for i in chosen:
        out[i] = with_diagnosis_prompt(items[i], by_path[str(items[i].ecg_path)], config.ecg_token)
    n_reports = sum(it.meta.get("kind") == "report" for it in items)
    log(f"DDP: {len(chosen)} of {n_reports} report items ask with the findings of {labeller.encoder}'s probes "
        f"({', '.join(p.labelset for p in labeller.probes)})")
    return out, len(chosen)
