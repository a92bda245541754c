"""ECG-Chat's ``HFTokenizer``: an HF AutoTokenizer with ``<s>``/``</s>`` added (the embedding
matrix is NOT resized: ECG-Chat never uses them), ``whitespace`` cleaning (ftfy when installed,
html.unescape twice, whitespace runs collapsed, strip), padding to max_length, truncation, context
length 77. Lower-casing is the caller's choice: ECG-Chat lower-cases training texts but passes
zero-shot prompts unchanged (an uncased BERT vocabulary lower-cases anyway).
"""
from __future__ import annotations

import html
import re
from pathlib import Path

import torch

DEFAULT_CONTEXT_LENGTH = 77

try:  # ftfy only changes broken unicode; plain text is identical without it
    import ftfy as _ftfy
except ImportError:  # pragma: no cover - depends on the environment
    _ftfy = None


def whitespace_clean(text: str) -> str:
    if _ftfy is not None:
        text = _ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class HFTokenizer:
    def __init__(self, name_or_path: str | Path, context_length: int = DEFAULT_CONTEXT_LENGTH):
        from transformers import AutoTokenizer

        self.name_or_path = str(name_or_path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot load a tokenizer from {self.name_or_path!r} (the hub is offline: "
                             f"give a local folder): {exc}") from None
        self.tokenizer.add_tokens(["<s>", "</s>"])
        self.context_length = int(context_length)
        self.pad_token_id = int(self.tokenizer.pad_token_id or 0)

    def __len__(self) -> int:
        return len(self.tokenizer)

    def __call__(self, texts: str | list[str], context_length: int | None = None,
                 lower: bool = False) -> torch.Tensor:
        """texts -> LongTensor [B, context_length] ([CLS] ... [SEP] then pad id)."""
        if isinstance(texts, str):
            texts = [texts]
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise ValueError(f"texts must be strings, got {bad[:3]!r}")
        n = int(context_length or self.context_length)
        texts = [whitespace_clean(t.lower() if lower else t) for t in texts]
        enc = self.tokenizer(texts, return_tensors="pt", max_length=n, padding="max_length",
                             truncation=True)
        return enc["input_ids"].long()

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids if int(i) != self.pad_token_id],
                                     skip_special_tokens=True)

    def save_pretrained(self, folder: str | Path) -> None:
        """Writes the base tokenizer files (without the two added tokens, which __init__ adds)."""
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(self.name_or_path).save_pretrained(str(folder))
