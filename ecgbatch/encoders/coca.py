"""ECG-CoCa: ECG tower + HF text tower + caption decoder + learnable temperature.

Module names are ECG-Chat's (``ecg``, ``text``, ``text_decoder``, ``logit_scale``) so a state
dict from an ECG-Chat training checkpoint loads strictly. ``forward`` returns a dict (open_clip
habit); the loss lives in ``ecgbatch.encoders.loss``.
"""
from __future__ import annotations

import hashlib
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecgbatch.device import CUDA, Device, autocast_dtype
from ecgbatch.encoders.config import CocaConfig
from ecgbatch.encoders.decoder import MultimodalTransformer
from ecgbatch.encoders.ecg_tower import EcgTransformer
from ecgbatch.encoders.rhythm import RhythmChannel, text_rr_ms
from ecgbatch.encoders.text_tower import HFTextEncoder


class CoCa(nn.Module):
    def __init__(self, cfg: CocaConfig, text_transformer: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.text = HFTextEncoder(cfg.text_cfg, cfg.embed_dim, text_transformer)
        self.ecg = EcgTransformer(cfg.ecg_cfg, cfg.embed_dim)
        self.text_decoder = MultimodalTransformer(cfg.multimodal_cfg, cfg.text_cfg.vocab_size)
        self.logit_scale = nn.Parameter(torch.ones([]) * cfg.init_logit_scale)
        self.rhythm = None
        if cfg.rhythm_cfg is not None:
            self.rhythm = RhythmChannel(cfg.rhythm_cfg, cfg.ecg_cfg.width,
                                        list(cfg.preprocess.leads).index(cfg.rhythm_cfg.lead), cfg.preprocess.fs)
        self.tokenizer = None          # set by the factory when a tokenizer is available
        self.provenance: dict = {}     # where the weights came from (factory / loaders fill it)

    # -- convenience -----------------------------------------------------------------------
    @property
    def preprocess_config(self):
        return self.cfg.preprocess

    @property
    def embed_dim(self) -> int:
        """Width of the embeddings: the projection's, plus the rhythm channel's RR block."""
        return self.cfg.embed_dim + (self.rhythm.dim if self.rhythm is not None else 0)

    @property
    def rhythm_spec(self) -> dict | None:
        """What a read stage needs to compute the rhythm inputs: {"lead_index", "fs"} (None
        without a rhythm channel)."""
        if self.rhythm is None:
            return None
        return {"lead_index": self.rhythm.lead_index, "fs": self.rhythm.fs}

    @property
    def n_ecg_tokens(self) -> int:
        return self.cfg.ecg_cfg.n_tokens

    @property
    def weights_hash(self) -> str:
        """sha256 prefix (16 hex) over every state-dict tensor (name, dtype, shape, bytes) in
        sorted key order: stable across runs and devices, changes with any weight. Computed on
        each access (about a second per GB)."""
        h = hashlib.sha256()
        sd = self.state_dict()
        for k in sorted(sd):
            t = sd[k].detach().cpu().contiguous().reshape(-1)
            h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()[:16]

    # -- towers ----------------------------------------------------------------------------
    def _encode_ecg(self, ecg: torch.Tensor, normalize: bool = True, rhythm=None):
        if self.rhythm is None:
            latent, tokens = self.ecg(ecg)
            return (F.normalize(latent, dim=-1) if normalize else latent), tokens
        # Rhythm channel: always [learned (unit), RR block] with unit norm, whatever ``normalize``.
        feats, rr = self.rhythm.measure(ecg, given=rhythm)
        latent, tokens = self.ecg(ecg, cls_bias=self.rhythm.cls_bias(feats, ecg.dtype))
        unit = F.normalize(latent.float(), dim=-1)
        return self.rhythm.combine(unit, self.rhythm.rr_block(rr, unknown_slot=True)), tokens

    def _encode_text(self, ids: torch.Tensor, normalize: bool = True, rr_ms=None):
        latent, tokens = self.text(ids)
        return self.text_output(latent, ids, normalize, rr_ms), tokens

    def text_output(self, latent: torch.Tensor, ids: torch.Tensor, normalize: bool = True, rr_ms=None):
        """The text embedding from the projected pooled state ``latent``: as is for ECG-Chat's
        model; with the rhythm channel, [learned, RR block of the RR the text states] (the RR
        is read from ``ids`` through the tokenizer unless ``rr_ms`` gives it)."""
        if self.rhythm is None:
            return F.normalize(latent, dim=-1) if normalize else latent
        if rr_ms is None:
            rr_ms = self.text_rr_ms(ids)
        out = self.rhythm.combine(F.normalize(latent.float(), dim=-1),
                                  self.rhythm.rr_block(rr_ms, unknown_slot=False))
        return F.normalize(out, dim=-1) if normalize else out

    def text_rr_ms(self, ids: torch.Tensor) -> np.ndarray:
        """The RR interval (ms, NaN if none) each tokenised text states (rhythm channel)."""

        if self.tokenizer is None:
            raise ValueError("this model's rhythm channel reads RR values from the text and needs "
                             "its tokenizer attached")
        return np.array([text_rr_ms(self.tokenizer.decode(row.tolist())) for row in ids.cpu()],
                        dtype=np.float64)

    def encode_ecg(self, x: torch.Tensor, normalize: bool = True, rhythm=None) -> torch.Tensor:
        """x float [B, leads, samples] -> [B, embed_dim] (L2-normalised by default). ``rhythm``:
        the rhythm channel's inputs when already computed (``ecgbatch.encoders.rhythm.rhythm_inputs``)."""
        return self._encode_ecg(x, normalize, rhythm)[0]

    def encode_text(self, token_ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """token_ids long [B, L] -> [B, embed_dim] (L2-normalised by default)."""
        return self._encode_text(token_ids, normalize)[0]

    def ecg_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The LLM's ECG tokens: last block output before ln_post, CLS first, [B, 101, width]."""
        return self.ecg(x, output_last_transformer_layer=True)

    def forward(self, ecg: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        text_latent, text_states = self._encode_text(text)
        ecg_latent, ecg_tok = self._encode_ecg(ecg)   # normalised (unit) features, as ClipLoss wants
        # Decoder queries: text states [:, :-1]; position t predicts text[:, t + 1].
        logits = self.text_decoder(ecg_tok, text_states[:, :-1])
        return {
            "ecg_features": ecg_latent,
            "text_features": text_latent,
            "logits": logits,
            "labels": text[:, 1:],
            "logit_scale": self.logit_scale.exp(),
        }

    def lock_text_tower(self, freeze_layer_norm: bool = False) -> None:
        self.text.lock(freeze_layer_norm)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.ecg.set_grad_checkpointing(enable)
        self.text_decoder.grad_checkpointing = enable

    # -- batch inference -------------------------------------------------------------------
    def _amp(self, device: torch.device, amp_dtype: torch.dtype | None):
        """bf16 autocast on CUDA (fp16 without bf16), none on CPU: ecgbatch.device decides."""
        if device.type != "cuda":
            return nullcontext()   # CPU: float32 as stored
        here = Device(CUDA, bf16=torch.cuda.is_bf16_supported())
        return torch.autocast("cuda", dtype=amp_dtype or getattr(torch, autocast_dtype(here)))

    @staticmethod
    def _to_device(x, dev: torch.device) -> torch.Tensor:
        """A float32 batch on ``dev``; to a GPU from page-locked host memory (an asynchronous,
        faster copy; the kernels that read it queue behind it on the same stream)."""
        xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(torch.float32)
        if dev.type == "cuda" and xt.device.type == "cpu":
            xt = xt.pin_memory()
        return xt.to(dev, non_blocking=True)

    def embed_ecgs(self, x, normalize: bool = True, amp_dtype: torch.dtype | None = None,
                   rhythm=None) -> np.ndarray:
        """Batch inference: array/tensor [B, leads, samples] -> float32 numpy [B, embed_dim].
        Runs under inference_mode; bf16 (or fp16) autocast on CUDA, float32 on CPU. ``rhythm``:
        precomputed rhythm-channel inputs (features, RR) for x, else they are computed here."""
        dev = next(self.parameters()).device
        xt = self._to_device(x, dev)
        with torch.inference_mode(), self._amp(dev, amp_dtype):
            out = self.encode_ecg(xt, normalize=False, rhythm=rhythm).float()
        if normalize:
            out = F.normalize(out, dim=-1)   # normalise in fp32 after autocast
        return out.cpu().numpy()

    def embed_texts(self, texts: list[str], normalize: bool = True, lower: bool = False,
                    amp_dtype: torch.dtype | None = None) -> np.ndarray:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer attached (text encoder folder unknown)")
        dev = next(self.parameters()).device
        ids = self.tokenizer(texts, lower=lower).to(dev)
        with torch.inference_mode(), self._amp(dev, amp_dtype):
            out = self.encode_text(ids, normalize=False).float()
        if normalize:
            out = F.normalize(out, dim=-1)
        return out.cpu().numpy()

    def llm_tokens(self, x, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Batch inference for the LLaVA stage: [B, 101, width] (inference_mode, autocast on CUDA)."""
        dev = next(self.parameters()).device
        xt = self._to_device(x, dev)
        with torch.inference_mode(), self._amp(dev, amp_dtype):
            return self.ecg_tokens(xt)
