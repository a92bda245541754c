"""The grounded prompt in ECG-LLaVA training data (``data.grounded: <fraction>`` of a llava job
config), so that a model is trained on exactly the prompts it is served with.

A seeded fraction of the job's items, of every kind (report requests, yes/no, rate, rhythm and
axis questions, dialogues: `chat` and `serve` ground the first question of every conversation),
gets its first question rewritten as ``report --grounded`` asks it: ``ecgbatch.llava.grounding.ground`` of the record's measurements (the same
``measure_for_grounds``, multilead method, on the record as read) and, when the tower's encoder
has probes, their findings on the encoder's embedding (cached as the DDP embeddings), then the
question (``Grounding.question``). ``meta.grounding`` records the grounding. A job gives
data.grounded or data.diagnosis_prompt, not both (both state the probes' findings). A model
trained with data.grounded = 1 should say so in its config (``"prompt": {"grounded": true}``) so
that `report`, `chat` and `serve` default to the grounded prompt.
"""
from __future__ import annotations

from typing import Callable

from ecgbatch.llava.grounding import Grounding, ground, measure_for_grounds
import numpy as np

from ecgbatch.training.instruct_diagnosis_prompt import ask_first_turn, record_embeddings

SEED_SALT = 17


def grounded_selection(items, fraction: float, seed: int) -> list[int]:
    """Indices (sorted) of the items asked with their grounding: round(fraction x items), of every
    kind, drawn with a generator seeded by (seed, 17), so the same job picks the same items."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"data.grounded must be a fraction in [0, 1], got {fraction!r}")
    k = int(round(fraction * len(items)))
    return sorted(int(j) for j in np.random.default_rng([seed, SEED_SALT]).permutation(len(items))[:k])


def with_grounded_prompt(item, grounding: Grounding, ecg_token: str = "<ecg>"):
    """A copy of ``item`` whose first human turn asks the grounded question."""
    return ask_first_turn(item, grounding.question, ecg_token, {"grounding": grounding.to_dict()})


def apply_grounded_prompts(items, fraction: float, seed: int, read_record: Callable, labeller=None,
                           read=None, cache_dir=None, config=None, log=print):
    """(items with the chosen report items asked with their grounding, number rewritten).
    ``read_record(item)`` -> the item's Record (measured); with ``labeller`` (FindingsLabeller),
    ``read(path)`` -> the model input for the probes' embeddings (cached in ``cache_dir``)."""
    chosen = grounded_selection(items, fraction, seed)
    if not chosen:
        return list(items), 0
    first = {}
    for i in chosen:
        first.setdefault(str(items[i].ecg_path), items[i])
    paths = sorted(first)
    measured = {p: measure_for_grounds(read_record(first[p])) for p in paths}
    embs = (record_embeddings(labeller, paths, read, cache_dir, config, log) if labeller is not None
            else [None] * len(paths))
    probes = labeller.probes if labeller is not None else ()
    by_path = {p: ground(measured[p], probes=probes, embedding=e) for p, e in zip(paths, embs)}
    out = list(items)
    token = config.ecg_token if config is not None else "<ecg>"
    for i in chosen:
        out[i] = with_grounded_prompt(items[i], by_path[str(items[i].ecg_path)], token)
    log(f"grounded prompt: {len(chosen)} of {len(items)} items ask with their measurements"
        f"{' and the findings of ' + labeller.encoder + chr(39) + 's probes' if labeller is not None else ''}")
    return out, len(chosen)
