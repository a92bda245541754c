"""Prompts and token ids, exactly as ECG-Chat makes them (no torch needed).

- ``VICUNA_V1``: ECG-Chat's ``conv_vicuna_v1`` (sep_style TWO, sep " ", sep2 "</s>", roles
  USER/ASSISTANT). ``render_vicuna_v1(turns)`` is its ``get_prompt()``: a generation prompt ends
  with "ASSISTANT:", a training turn with "ASSISTANT: {answer}</s>".
- ``build_prompt(question, prompt_format, tokenizer, history)``: the inference prompt, with
  "<ecg>\\n" put at the start of the first user turn (ECG-Chat's ``preprocess_multimodal``), in
  Vicuna v1 or in the language model's own chat template.
- ``tokenize_with_ecg``: ECG-Chat's ``mm_utils.tokenizer_ecg_token``: split on "<ecg>", tokenise
  each chunk, keep one BOS, put ``ecg_token_id`` where ECG-Chat puts -200. Every path (HF
  generate, vLLM TokensPrompt, training) uses these ids, so all see identical tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ecgbatch.llava.configuration_ecg_llava import DEFAULT_ECG_TOKEN
from ecgbatch.llava.errors import EcgPromptError

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")


@dataclass(frozen=True)
class VicunaTemplate:
    """ECG-Chat's conv_vicuna_v1 (llava/conversation.py, SeparatorStyle.TWO)."""

    system: str = VICUNA_SYSTEM
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "
    sep2: str = "</s>"

    def render(self, messages: Sequence[tuple[str, str | None]]) -> str:
        """``Conversation.get_prompt()``: messages are (role, text); text None = open turn."""
        seps = (self.sep, self.sep2)
        out = self.system + seps[0]
        for i, (role, text) in enumerate(messages):
            out += f"{role}: {text}{seps[i % 2]}" if text else f"{role}:"
        return out


VICUNA_V1 = VicunaTemplate()


def with_ecg_first(question: str, ecg_token: str = DEFAULT_ECG_TOKEN) -> str:
    """ECG-Chat's preprocess_multimodal: the placeholder moves to the start, "<ecg>\\n" + text."""
    return f"{ecg_token}\n" + question.replace(ecg_token, "").strip()


def _turns(question: str, history: Sequence[tuple[str, str]] | None, ecg_token: str) -> list[tuple[str, str]]:
    """(user, assistant) pairs of the history followed by the new question; the placeholder
    goes into the first user turn (once), unless the caller already placed it somewhere."""
    pairs = [(str(q), str(a)) for q, a in (history or [])]
    texts = [q for q, _ in pairs] + [question]
    if not any(ecg_token in t for t in texts):
        texts[0] = with_ecg_first(texts[0], ecg_token)
    return [(texts[i], pairs[i][1] if i < len(pairs) else None) for i in range(len(texts))]


def build_prompt(question: str, prompt_format: str = "vicuna_v1", tokenizer=None,
                 history: Sequence[tuple[str, str]] | None = None,
                 ecg_token: str = DEFAULT_ECG_TOKEN) -> str:
    """Generation prompt for ``question`` about one ECG (``history``: earlier (question, answer)
    pairs of the same conversation). "vicuna_v1" reproduces ECG-Chat's prompt exactly;
    "chat_template" uses ``tokenizer``'s own chat template with add_generation_prompt."""
    turns = _turns(question, history, ecg_token)
    if prompt_format == "vicuna_v1":
        messages: list[tuple[str, str | None]] = []
        for q, a in turns:
            messages += [(VICUNA_V1.roles[0], q), (VICUNA_V1.roles[1], a)]
        return VICUNA_V1.render(messages)
    if prompt_format == "chat_template":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise EcgPromptError("prompt_format 'chat_template' needs a tokenizer that has a chat template")
        chat = []
        for q, a in turns:
            chat.append({"role": "user", "content": q})
            if a is not None:
                chat.append({"role": "assistant", "content": a})
        return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    raise EcgPromptError(f"prompt_format must be 'vicuna_v1' or 'chat_template', got {prompt_format!r}")


def tokenize_with_ecg(tokenizer, prompt: str, ecg_token_id: int, ecg_token: str = DEFAULT_ECG_TOKEN,
                      add_special_tokens: bool = True) -> list[int]:
    """ECG-Chat's ``tokenizer_ecg_token(prompt, tokenizer)`` with ``ecg_token_id`` for -200.

    Each chunk between placeholders is tokenised on its own (so the "▁" that SentencePiece puts
    at the start of a chunk is kept, as in ECG-Chat); the first chunk's BOS is kept and the BOS
    of every later chunk dropped. ``add_special_tokens=False`` for prompts whose text already
    carries the special tokens (chat templates)."""
    chunks = [tokenizer(c, add_special_tokens=add_special_tokens).input_ids for c in prompt.split(ecg_token)]
    bos = tokenizer.bos_token_id
    offset = 1 if chunks and chunks[0] and bos is not None and chunks[0][0] == bos else 0
    ids: list[int] = [chunks[0][0]] if offset else []
    for i, chunk in enumerate(chunks):
        if i > 0:
            ids.append(ecg_token_id)
        ids.extend(chunk[offset:])
    return ids


def count_placeholders(ids: Sequence[int], ecg_token_ids: Sequence[int]) -> int:
    wanted = set(ecg_token_ids)
    return sum(1 for t in ids if t in wanted)


def prompt_ids(tokenizer, question: str, config, history: Sequence[tuple[str, str]] | None = None) -> list[int]:
    """Token ids of the generation prompt for ``question`` under the model's ``config``
    (prompt_format, ecg_token, ecg_token_id): what HF generate and vLLM are both fed."""
    prompt = build_prompt(question, config.prompt_format, tokenizer, history, config.ecg_token)
    ids = tokenize_with_ecg(tokenizer, prompt, config.ecg_token_id, config.ecg_token,
                            add_special_tokens=config.prompt_format == "vicuna_v1")
    n = count_placeholders(ids, [config.ecg_token_id])
    if n != 1:
        raise EcgPromptError(f"a prompt must hold exactly one {config.ecg_token} for its ECG, this one holds "
                             f"{n}: {prompt[:120]!r}")
    return ids
