"""EcgLlavaForCausalLM: ECG tower -> projector -> causal LM, spliced as ECG-Chat does.

    ecgs [B, 12, T] --EcgTransformer.transformer_output--> [B, N, W]   (last block, before ln_post,
                                                                       all N = 1 + T/patch tokens)
                    --projector (Linear | Linear, GELU(erf), Linear)--> [B, N, H]
    input_ids [B, S] with one placeholder per ECG (config.ecg_token_id, or ECG-Chat's -200)
                    --splice_ecg_embeddings--> inputs_embeds [B, L, H], L = S - n_ecg + N * n_ecg
                    --language_model (any HF causal LM)--> logits [B, L, V]

Splicing follows ECG-Chat's ``LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal``: text
pieces between placeholders are embedded with the LM's ``embed_tokens``, each placeholder is
replaced by the next ECG's N rows (labels IGNORE_INDEX there), sequences are padded with zero
vectors (right for training; left for generation), position ids count real positions only.
Where ECG-Chat is silent or lenient, this module refuses instead: a prompt whose placeholders do
not match the ECGs given, or a spliced sequence longer than the context, raises a typed error.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ecgbatch.encoders.ecg_tower import EcgTransformer
from ecgbatch.llava.configuration_ecg_llava import (ECGCHAT_ECG_TOKEN_INDEX, IGNORE_INDEX,
                                                    EcgLlavaConfig)
from ecgbatch.llava.errors import ContextLengthError, EcgInputError, EcgPromptError


def build_ecg_tower(config: EcgLlavaConfig) -> EcgTransformer:
    """The ECG tower described by ``config.ecg_config`` (ECG-CoCa's ECG transformer, frozen)."""
    tower = EcgTransformer(config.tower_cfg, config.tower_embed_dim)
    tower.lock()
    return tower


def build_projector(config: EcgLlavaConfig) -> nn.Sequential:
    """ECG-Chat's build_ecg_projector: "linear" = Linear(W, H); "mlp2x_gelu" = Linear(W, H),
    GELU (exact erf), Linear(H, H). Always a Sequential, so names are projector.0.* (+ .2.*)."""
    w, h = config.mm_hidden_size, config.hidden_size
    if config.projector_type == "linear":
        return nn.Sequential(nn.Linear(w, h))
    return nn.Sequential(nn.Linear(w, h), nn.GELU(), nn.Linear(h, h))


@dataclass
class SplicedInputs:
    inputs_embeds: torch.Tensor          # [B, L, H]
    attention_mask: torch.Tensor         # [B, L] bool, True on real positions
    position_ids: torch.Tensor           # [B, L] 0..len-1 on real positions, 0 on pads
    labels: torch.Tensor | None          # [B, L], IGNORE_INDEX on ECG rows and pads


def placeholder_mask(input_ids: torch.Tensor, ecg_token_id: int | None) -> torch.Tensor:
    """True where an ECG goes: the config's placeholder id, or ECG-Chat's -200."""
    mask = input_ids == ECGCHAT_ECG_TOKEN_INDEX
    if ecg_token_id is not None:
        mask |= input_ids == ecg_token_id
    return mask


def check_placeholders(input_ids: torch.Tensor, n_ecgs: int, ecg_token_id: int | None,
                       attention_mask: torch.Tensor | None = None) -> None:
    """Every sequence must hold at least one placeholder and all of them together exactly
    ``n_ecgs`` (ECGs are consumed in batch order). With no ECGs, no placeholder at all."""
    is_ecg = placeholder_mask(input_ids, ecg_token_id)
    if attention_mask is not None:
        is_ecg &= attention_mask.bool()
    per_seq = is_ecg.sum(dim=1).tolist()
    total = sum(per_seq)
    if n_ecgs == 0 and total:
        raise EcgPromptError(f"the prompt holds {total} ECG placeholder(s) but no ECG was given")
    if n_ecgs and 0 in per_seq:
        raise EcgPromptError(f"prompt {per_seq.index(0)} of the batch holds no ECG placeholder (<ecg>); "
                             "each prompt needs one <ecg> per ECG it is about")
    if total != n_ecgs:
        raise EcgPromptError(f"the prompts hold {total} ECG placeholder(s) ({per_seq} per prompt) for "
                             f"{n_ecgs} ECG(s); they must match one to one")


def splice_ecg_embeddings(input_ids: torch.Tensor, ecg_embeds: torch.Tensor | None,
                          embed_tokens: nn.Module, ecg_token_id: int | None,
                          attention_mask: torch.Tensor | None = None,
                          labels: torch.Tensor | None = None,
                          max_length: int | None = None, truncate: bool = False,
                          padding_side: str = "right") -> SplicedInputs:
    """input_ids [B, S] + ecg_embeds [n_ecg, N, H] -> SplicedInputs (see module docstring).
    ``max_length``: the context; longer sequences raise ContextLengthError, or are cut to it
    when ``truncate`` (ECG-Chat's training behaviour)."""
    B, S = input_ids.shape                                   # batch, tokens
    n_ecg = 0 if ecg_embeds is None else ecg_embeds.shape[0]
    check_placeholders(input_ids, n_ecg, ecg_token_id, attention_mask)
    keep = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    is_ecg = placeholder_mask(input_ids, ecg_token_id)
    seqs, seq_labels, next_ecg = [], [], 0
    for b in range(B):
        ids = input_ids[b][keep[b]]                          # [S_b] padding removed
        lab = labels[b][keep[b]] if labels is not None else None
        where = torch.nonzero(is_ecg[b][keep[b]]).flatten().tolist()
        bounds = [-1] + where + [ids.shape[0]]
        text_ids = [ids[bounds[i] + 1:bounds[i + 1]] for i in range(len(bounds) - 1)]
        # one embedding call over the text pieces together (as ECG-Chat), then split
        text_emb = torch.split(embed_tokens(torch.cat(text_ids)), [t.shape[0] for t in text_ids])
        parts, part_labels = [], []
        for i, emb in enumerate(text_emb):
            parts.append(emb)
            if lab is not None:
                part_labels.append(lab[bounds[i] + 1:bounds[i + 1]])
            if i < len(where):
                e = ecg_embeds[next_ecg].to(emb.dtype)       # [N, H]
                next_ecg += 1
                parts.append(e)
                if lab is not None:
                    part_labels.append(torch.full((e.shape[0],), IGNORE_INDEX, dtype=lab.dtype, device=lab.device))
        seqs.append(torch.cat(parts))                         # [L_b, H]
        seq_labels.append(torch.cat(part_labels) if lab is not None else None)
    seqs, seq_labels = _fit_context(seqs, seq_labels, max_length, truncate)
    return _pad_batch(seqs, seq_labels, padding_side)


def _fit_context(seqs, seq_labels, max_length, truncate):
    if max_length is None:
        return seqs, seq_labels
    too_long = [(b, s.shape[0]) for b, s in enumerate(seqs) if s.shape[0] > max_length]
    if too_long and not truncate:
        b, n = too_long[0]
        raise ContextLengthError(f"prompt {b} is {n} positions long with its ECG tokens, longer than the "
                                 f"model's context of {max_length}; shorten the text or the history")
    return ([s[:max_length] for s in seqs],
            [None if lab is None else lab[:max_length] for lab in seq_labels])


def _pad_batch(seqs, seq_labels, padding_side: str) -> SplicedInputs:
    L = max(s.shape[0] for s in seqs)
    B, H = len(seqs), seqs[0].shape[1]
    dev, dtype = seqs[0].device, seqs[0].dtype
    embeds = torch.zeros((B, L, H), dtype=dtype, device=dev)
    mask = torch.zeros((B, L), dtype=torch.bool, device=dev)
    pos = torch.zeros((B, L), dtype=torch.long, device=dev)
    labels = None
    if seq_labels[0] is not None:
        labels = torch.full((B, L), IGNORE_INDEX, dtype=seq_labels[0].dtype, device=dev)
    for b, s in enumerate(seqs):
        n = s.shape[0]
        sl = slice(0, n) if padding_side == "right" else slice(L - n, L)
        embeds[b, sl] = s
        mask[b, sl] = True
        pos[b, sl] = torch.arange(n, device=dev)
        if labels is not None:
            labels[b, sl] = seq_labels[b]
    return SplicedInputs(embeds, mask, pos, labels)


class EcgLlavaPreTrainedModel(PreTrainedModel):
    config_class = EcgLlavaConfig
    config: EcgLlavaConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["LlamaDecoderLayer"]

    def _init_weights(self, module):
        # The language model (a PreTrainedModel) initialises itself (transformers dispatches to
        # it); the tower and projector keep torch's defaults until a checkpoint fills them. The
        # loaders check that every tensor comes from a file, so no initial value survives.
        return


class EcgLlavaForCausalLM(EcgLlavaPreTrainedModel):
    """ECG-LLaVA: ``.ecg_tower`` (EcgTransformer, frozen), ``.projector``, ``.language_model``."""

    def __init__(self, config: EcgLlavaConfig):
        super().__init__(config)
        self.ecg_tower = build_ecg_tower(config)
        self.projector = build_projector(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    # -- pieces ------------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def encode_ecgs(self, ecgs: torch.Tensor) -> torch.Tensor:
        """ecgs [B, leads, samples] -> projected ECG tokens [B, N, H]. The frozen tower runs
        without gradients (ECG-Chat's CLIPECGTower.forward is @torch.no_grad)."""
        if not torch.is_tensor(ecgs) or ecgs.ndim != 3:
            raise EcgInputError(f"ecgs must be a tensor [batch, leads, samples], got "
                                f"{tuple(ecgs.shape) if torch.is_tensor(ecgs) else type(ecgs).__name__}")
        tower_dev = self.ecg_tower.conv1.weight.device
        with torch.no_grad():
            feats = self.ecg_tower.transformer_output(ecgs.to(tower_dev))    # [B, N, W]
        proj = self.projector
        return proj(feats.to(proj[0].weight.dtype))                           # [B, N, H]

    def ecg_features(self, ecgs: torch.Tensor) -> torch.Tensor:
        """Tower output alone [B, N, W] (what ECG-Chat's CLIPECGTower returns)."""
        with torch.no_grad():
            return self.ecg_tower.transformer_output(ecgs.to(self.ecg_tower.conv1.weight.device))

    def prepare_inputs(self, input_ids: torch.Tensor, ecgs: torch.Tensor | None = None,
                       attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                       padding_side: str = "right", truncate: bool = False) -> SplicedInputs:
        """ECG-Chat's prepare_inputs_labels_for_multimodal (see splice_ecg_embeddings)."""
        ecg_embeds = self.encode_ecgs(ecgs) if ecgs is not None else None
        return splice_ecg_embeddings(input_ids, ecg_embeds, self.get_input_embeddings(),
                                     self.config.ecg_token_id, attention_mask, labels,
                                     max_length=self.config.context_length, truncate=truncate,
                                     padding_side=padding_side)

    # -- forward / generate ----------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None = None, ecgs: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, truncate: bool = False,
                **lm_kwargs) -> CausalLMOutputWithPast:
        """input_ids [B, S] (+ ecgs [n_ecg, leads, samples], one per placeholder) -> the LM's
        output on the spliced sequence: logits [B, L, V]; loss when labels [B, S] are given
        (shifted cross-entropy over the non-ignored positions, as ECG-Chat/HF compute it)."""
        if inputs_embeds is None:
            if input_ids is None:
                raise EcgPromptError("forward needs input_ids (or inputs_embeds)")
            sp = self.prepare_inputs(input_ids, ecgs, attention_mask, labels, "right", truncate)
            inputs_embeds, labels = sp.inputs_embeds, sp.labels
            if attention_mask is not None or not bool(sp.attention_mask.all()):
                attention_mask = sp.attention_mask.long()
                lm_kwargs.setdefault("position_ids", sp.position_ids)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   labels=labels, **lm_kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, ecgs: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **generate_kwargs) -> torch.Tensor:
        """Splice once, then HF generate from ``inputs_embeds`` (ECG-Chat's
        LlavaLlamaForCausalLM.generate); later steps feed new tokens through the KV cache.
        Batches are left-padded after splicing. Returns only the new token ids [B, new]."""
        sp = self.prepare_inputs(input_ids, ecgs, attention_mask, None, "left")
        max_new = generate_kwargs.get("max_new_tokens")
        limit = self.config.context_length
        if limit is not None and max_new is not None and sp.inputs_embeds.shape[1] + max_new > limit:
            raise ContextLengthError(f"prompt ({sp.inputs_embeds.shape[1]} positions with its ECG tokens) + "
                                     f"max_new_tokens ({max_new}) exceed the model's context of {limit}")
        return self.language_model.generate(inputs_embeds=sp.inputs_embeds,
                                            attention_mask=sp.attention_mask.long(), **generate_kwargs)


def register_auto_model() -> None:
    """AutoModelForCausalLM.from_pretrained(folder) builds an EcgLlavaForCausalLM (idempotent;
    it does not check weights as strictly as load_ecg_llava, which is the loader to use)."""
    try:
        AutoModelForCausalLM.register(EcgLlavaConfig, EcgLlavaForCausalLM)
    except ValueError:
        pass


register_auto_model()
