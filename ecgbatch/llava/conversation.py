"""Training examples as ECG-Chat builds them: ``train.py::preprocess_v1`` (conversation version
"v1", Vicuna template). Input ids and labels with everything but the assistant answers (and
their "</s>") masked to IGNORE_INDEX.

A source is ECG-Chat's ``conversations`` list: ``[{"from": "human", "value": "<ecg>\\n..."},
{"from": "gpt", "value": "..."}, ...]``. The masking reproduces ECG-Chat's arithmetic, including
the off-by-one correction it applies for non-legacy tokenizers (tokenizers >= 0.14) on every
round after the first, and its behaviour on a mismatch: the whole example is masked (ECG-Chat
prints "WARNING: tokenization mismatch"; here ``LabelledExample.mismatch`` says so).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ecgbatch.llava.configuration_ecg_llava import DEFAULT_ECG_TOKEN, IGNORE_INDEX
from ecgbatch.llava.errors import EcgPromptError
from ecgbatch.llava.prompting import VICUNA_V1, tokenize_with_ecg

ROLE_OF = {"human": VICUNA_V1.roles[0], "gpt": VICUNA_V1.roles[1]}


@dataclass
class LabelledExample:
    prompt: str
    input_ids: list[int]
    labels: list[int]
    mismatch: bool = False   # ECG-Chat's "tokenization mismatch": all labels masked


def vicuna_v1_text(source: Sequence[dict[str, Any]]) -> str:
    """The training text of one conversation (a first turn that is not human's is dropped, as
    ECG-Chat does); roles must alternate human/gpt."""
    turns = list(source)
    if turns and ROLE_OF.get(turns[0].get("from")) != VICUNA_V1.roles[0]:
        turns = turns[1:]
    messages = []
    for j, turn in enumerate(turns):
        role = ROLE_OF.get(turn.get("from"))
        if role != VICUNA_V1.roles[j % 2]:
            raise EcgPromptError(f"conversation turn {j} is from {turn.get('from')!r}; turns must alternate "
                                 "human, gpt, human, ...")
        messages.append((role, turn["value"]))
    return VICUNA_V1.render(messages)


def _is_legacy(tokenizer) -> bool:
    legacy = getattr(tokenizer, "legacy", None)
    if legacy is None:
        legacy = (getattr(tokenizer, "init_kwargs", None) or {}).get("legacy", True)
    return bool(legacy)


def label_vicuna_v1(source: Sequence[dict[str, Any]], tokenizer, ecg_token_id: int,
                    ecg_token: str = DEFAULT_ECG_TOKEN, has_ecg: bool = True,
                    model_max_length: int | None = None, legacy: bool | None = None) -> LabelledExample:
    """ECG-Chat's preprocess_v1 for one conversation. ``ecg_token_id`` stands where ECG-Chat
    writes -200 (pass -200 to get ECG-Chat's ids). ``legacy``: the tokenizer's legacy flag
    (read from the tokenizer when None; the off-by-one rule applies when it is False)."""
    text = vicuna_v1_text(source)
    if has_ecg:
        def tok(s: str) -> list[int]:
            return tokenize_with_ecg(tokenizer, s, ecg_token_id, ecg_token)
    else:
        def tok(s: str) -> list[int]:
            return tokenizer(s).input_ids
    ids = tok(text)
    max_len = model_max_length or getattr(tokenizer, "model_max_length", None) or len(ids) + 1
    if not has_ecg:
        ids = ids[:max_len]
    labels = list(ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.unk_token_id
    total_len = sum(1 for t in ids if t != pad_id)
    non_legacy = not (_is_legacy(tokenizer) if legacy is None else legacy)
    sep = VICUNA_V1.sep + VICUNA_V1.roles[1] + ": "
    cur = 1
    labels[:cur] = [IGNORE_INDEX] * min(cur, len(labels))
    for i, rnd in enumerate(text.split(VICUNA_V1.sep2)):
        if rnd == "":
            break
        parts = rnd.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = len(tok(rnd))
        instruction_len = len(tok(parts[0])) - 2
        if i != 0 and non_legacy:
            round_len -= 1
            instruction_len -= 1
        _mask(labels, cur, cur + instruction_len)
        cur += round_len
    _mask(labels, cur, len(labels))
    mismatch = cur < max_len and cur != total_len
    if mismatch:
        labels = [IGNORE_INDEX] * len(labels)
    return LabelledExample(prompt=text, input_ids=ids, labels=labels, mismatch=mismatch)


def _mask(labels: list[int], start: int, stop: int) -> None:
    """``target[start:stop] = IGNORE_INDEX`` with Python slice semantics (negative start/stop as
    torch indexing treats them, which ECG-Chat's code relies on)."""
    idx = range(len(labels))[start:stop]
    for k in idx:
        labels[k] = IGNORE_INDEX
