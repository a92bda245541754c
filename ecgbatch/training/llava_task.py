"""ECG-LLaVA training examples, trainable parameters and the loss.

- ``label_conversation``: one ECG-Instruct conversation -> (input_ids, labels) under the model's
  prompt format. "vicuna_v1" is ECG-Chat's ``preprocess_v1`` exactly
  (``ecgbatch.llava.conversation.label_vicuna_v1``, checked against ECG-Chat's fixture);
  "chat_template" (e.g. SmolLM2's ChatML) labels each assistant turn's tokens up to and including
  the end-of-turn token, and masks everything else, the same rule ECG-Chat applies to Vicuna.
- ``configure_stage``: "align" trains the projector only; "sft" adds peft LoRA on the language
  model's linear layers (ECG-Chat's target modules) with the projector trainable. The tower is
  always frozen.
- ``LlavaTask``: the step module; it takes the frozen tower's output from the ECG-token cache
  (``ecgbatch.training.ecg_tokens``) instead of running the tower, projects it, splices it into
  the prompt and returns the shifted cross-entropy over the labelled positions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ecgbatch.llava.configuration_ecg_llava import IGNORE_INDEX
from ecgbatch.llava.conversation import label_vicuna_v1
from ecgbatch.llava.errors import EcgPromptError
from ecgbatch.llava.modeling_ecg_llava import splice_ecg_embeddings
from ecgbatch.llava.prompting import tokenize_with_ecg

# ECG-Chat (llm_finetune_lora.sh + TrainingArguments defaults, ecg-chat-reference.md 6.2)
ECGCHAT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraConfig:
    r: int = 64
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(ECGCHAT_LORA_TARGETS))


def _chat(source) -> list[dict]:
    roles = {"human": "user", "gpt": "assistant"}
    turns = list(source)
    if turns and turns[0].get("from") != "human":
        turns = turns[1:]
    out = []
    for j, t in enumerate(turns):
        want = "human" if j % 2 == 0 else "gpt"
        if t.get("from") != want:
            raise EcgPromptError(f"conversation turn {j} is from {t.get('from')!r}; turns must alternate "
                                 "human, gpt, human, ...")
        out.append({"role": roles[want], "content": t["value"]})
    return out


def label_chat_template(source, tokenizer, ecg_token_id: int, ecg_token: str) -> tuple[list[int], list[int], bool]:
    """(ids, labels, mismatch) for a chat-template model. Each assistant turn's tokens are the
    difference between the conversation rendered through that turn and the prompt before it
    (with the generation prompt); labels keep them up to the end-of-turn token. A template whose
    renderings are not prefixes of each other is a mismatch: every label masked (as ECG-Chat)."""
    chat = _chat(source)

    def ids_of(messages, gen):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        return tokenize_with_ecg(tokenizer, text, ecg_token_id, ecg_token, add_special_tokens=False)

    full = ids_of(chat, False)
    labels = [IGNORE_INDEX] * len(full)
    eos = tokenizer.eos_token_id
    for k in range(1, len(chat), 2):
        before, through = ids_of(chat[:k], True), ids_of(chat[:k + 1], False)
        if full[:len(through)] != through or through[:len(before)] != before:
            return full, [IGNORE_INDEX] * len(full), True
        span = range(len(before), len(through))
        for i in span:
            labels[i] = full[i]
            if full[i] == eos:
                break
    return full, labels, False


def label_conversation(source, tokenizer, config) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, mismatch) of one conversation under ``config.prompt_format``."""
    if config.prompt_format == "vicuna_v1":
        ex = label_vicuna_v1(source, tokenizer, config.ecg_token_id, config.ecg_token)
        return ex.input_ids, ex.labels, ex.mismatch
    return label_chat_template(source, tokenizer, config.ecg_token_id, config.ecg_token)


def fit_length(ids: list[int], labels: list[int], n_ecg_tokens: int, max_length: int) -> tuple[list[int], list[int]]:
    """Cut the tail so that the spliced sequence (the placeholder becomes ``n_ecg_tokens``
    positions) fits ``max_length``."""
    room = max_length - (n_ecg_tokens - 1)
    return ids[:room], labels[:room]


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / labels / attention_mask."""
    n = max(len(i) for i, _ in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    lab = torch.full((len(examples), n), IGNORE_INDEX, dtype=torch.long)
    att = torch.zeros((len(examples), n), dtype=torch.long)
    for b, (i, l) in enumerate(examples):
        ids[b, :len(i)] = torch.as_tensor(i)
        lab[b, :len(l)] = torch.as_tensor(l)
        att[b, :len(i)] = 1
    return {"input_ids": ids, "labels": lab, "attention_mask": att}


def configure_stage(model, stage: str, lora: LoraConfig | None = None) -> list[str]:
    """Freeze/unfreeze for ``stage`` (align | sft); returns the trainable parameter names."""
    if stage not in ("align", "sft"):
        raise ValueError(f"stage must be 'align' or 'sft', got {stage!r}")
    for p in model.parameters():
        p.requires_grad_(False)
    if stage == "sft" and not hasattr(model.language_model, "peft_config"):
        from peft import LoraConfig as PeftLora, get_peft_model

        lora = lora or LoraConfig()
        cfg = PeftLora(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                       task_type="CAUSAL_LM", target_modules=list(lora.target_modules))
        model.language_model = get_peft_model(model.language_model, cfg)
    for n, p in model.named_parameters():
        if n.startswith("projector.") or (stage == "sft" and "lora_" in n):
            p.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


class LlavaTask(nn.Module):
    """forward(input_ids, labels, attention_mask, tower_tokens[B, N, W]) -> loss (mean over the
    labelled positions of the batch, as HF/ECG-Chat)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, labels, attention_mask, tower_tokens):
        m = self.model
        proj = m.projector
        ecg_embeds = proj(tower_tokens.to(proj[0].weight.dtype))
        sp = splice_ecg_embeddings(input_ids, ecg_embeds, m.get_input_embeddings(), m.config.ecg_token_id,
                                   attention_mask, labels, max_length=m.config.context_length,
                                   truncate=True, padding_side="right")
        out = m.language_model(inputs_embeds=sp.inputs_embeds, attention_mask=sp.attention_mask.long(),
                               position_ids=sp.position_ids, labels=sp.labels)
        return out.loss
