"""ECG-LLaVA for vLLM 0.32: a custom "ecg" modality (top-down, like vllm's qwen2_audio.py).

    multi_modal_data={"ecg": x}   x: [leads, samples] float (NumPy or torch), already through the
                                  model's PreprocessConfig (ecgbatch.llava.preprocess_for_model)
      EcgLlavaMultiModalDataParser -> EcgProcessorItems (shape checked against the tower)
      EcgLlavaMultiModalProcessor  -> ecg_values [1, leads, samples]; the prompt's one <ecg> id
                                      becomes num_ecg_tokens(config) placeholder ids
      EcgLlavaForConditionalGeneration.embed_multimodal
                                   -> tower (last block, before ln_post) -> projector -> [N, H]
      embed_input_ids (inherited)  -> the N rows replace the placeholders; the LM runs as usual

The weights are the ECG-LLaVA folder's ``model.safetensors`` unchanged (``ecg_tower.*``,
``projector.*``, ``language_model.*``). LoRA adapters (peft, written for the bare HF Llama) apply
to the language model only: ``hf_to_vllm_mapper`` renames their ``model.*`` / ``lm_head.*`` keys
(without it vLLM loads an adapter and silently ignores it) and ``get_mm_mapping`` keeps LoRA off
the tower and projector.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Literal

import numpy as np
import torch
from torch import nn
from transformers import BatchFeature

from ecgbatch.llava.configuration_ecg_llava import EcgLlavaConfig, num_ecg_tokens
from ecgbatch.llava.modeling_ecg_llava import build_ecg_tower, build_projector
from vllm.config import VllmConfig
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict
from vllm.model_executor.models.interfaces import (MultiModalEmbeddings, SupportsLoRA,
                                                   SupportsMultiModal)
from vllm.model_executor.models.module_mapping import MultiModelKeys
from vllm.model_executor.models.utils import (AutoWeightsLoader, WeightsMapper,
                                              init_vllm_registered_model, maybe_prefix)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import (ModalityDataItems, MultiModalDataItems, MultiModalDataParser,
                                   ProcessorBatchItems)
from vllm.multimodal.processing import (BaseDummyInputsBuilder, BaseMultiModalProcessor,
                                        BaseProcessingInfo, PromptReplacement, PromptUpdate)
from vllm.sequence import IntermediateTensors
from vllm.utils.tensor_schema import TensorSchema, TensorShape

MODALITY = "ecg"


# === ECG inputs === #
class EcgLlavaEcgInputs(TensorSchema):
    """Dimensions:
    - b: number of ECGs
    - l: leads (the tower's lead_num)
    - t: samples per lead (the tower's seq_length)
    """

    type: Literal["ecg_values"]
    ecg_values: Annotated[torch.Tensor, TensorShape("b", "l", "t")]


def ecg_token_count(config: EcgLlavaConfig) -> int:
    """LM positions per ECG: ecgbatch.llava's one helper (the tower's CLS + patches)."""
    return num_ecg_tokens(config)


class EcgProcessorItems(ProcessorBatchItems[torch.Tensor]):
    """ECGs as float32 tensors [leads, samples]; ``get_processor_data`` gives {"ecgs": [...]}."""

    def __init__(self, data: Sequence[torch.Tensor]) -> None:
        super().__init__(data, MODALITY)


class EcgLlavaMultiModalDataParser(MultiModalDataParser):
    """Adds the "ecg" key: one ECG [leads, samples], a stack [n, leads, samples], or a list of
    ECGs, as NumPy arrays (Ray Data hands tensors over as arrays) or torch tensors."""

    def __init__(self, leads: int, samples: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.leads, self.samples = leads, samples

    def _to_tensor(self, x, i: int) -> torch.Tensor:
        if isinstance(x, np.ndarray):
            if not np.issubdtype(x.dtype, np.number):
                raise ValueError(f"ECG {i}: array dtype {x.dtype} is not numeric")
            x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        elif not isinstance(x, torch.Tensor):
            raise ValueError(f"ECG {i}: expected a NumPy array or torch tensor [{self.leads}, "
                             f"{self.samples}], got {type(x).__name__}")
        if tuple(x.shape) != (self.leads, self.samples):
            raise ValueError(f"ECG {i}: expected shape ({self.leads}, {self.samples}) (leads x samples, "
                             f"after the model's preprocessing), got {tuple(x.shape)}")
        x = x.to(torch.float32)
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"ECG {i}: contains NaN or infinite values")
        return x

    def _parse_ecg_data(self, data) -> ModalityDataItems | None:
        if data is None:
            return None
        if isinstance(data, (np.ndarray, torch.Tensor)) and data.ndim == 2:
            items = [data]
        elif isinstance(data, (np.ndarray, torch.Tensor)) and data.ndim == 3:
            items = list(data)
        elif isinstance(data, (list, tuple)):
            items = list(data)
        else:
            shape = getattr(data, "shape", None)
            raise ValueError(f"ECG data must be [leads, samples], [n, leads, samples] or a list of "
                             f"ECGs, got {type(data).__name__}{'' if shape is None else tuple(shape)}")
        return EcgProcessorItems([self._to_tensor(x, i) for i, x in enumerate(items)])

    def _get_subparsers(self):
        return {**super()._get_subparsers(), MODALITY: self._parse_ecg_data}


# === Processing === #
class EcgLlavaProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> EcgLlavaConfig:
        return self.ctx.get_hf_config(EcgLlavaConfig)

    def get_data_parser(self) -> MultiModalDataParser:
        tower = self.get_hf_config().tower_cfg
        return EcgLlavaMultiModalDataParser(
            tower.lead_num, tower.seq_length,
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {MODALITY: None}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int] | None = None
                                   ) -> Mapping[str, int]:
        return {MODALITY: ecg_token_count(self.get_hf_config())}

    def get_ecg_token_id(self) -> int:
        cfg = self.get_hf_config()
        if cfg.ecg_token_id is None:
            raise ValueError("config.json has no ecg_token_id: the model folder cannot place ECGs")
        return int(cfg.ecg_token_id)


class EcgLlavaDummyInputsBuilder(BaseDummyInputsBuilder[EcgLlavaProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return self.info.get_hf_config().ecg_token * mm_counts.get(MODALITY, 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int],
                          mm_options: MultiModalDummyOptions) -> MultiModalDataDict:
        tower = self.info.get_hf_config().tower_cfg
        n = mm_counts.get(MODALITY, 0)
        return {MODALITY: [torch.zeros(tower.lead_num, tower.seq_length) for _ in range(n)]}


class EcgLlavaMultiModalProcessor(BaseMultiModalProcessor[EcgLlavaProcessingInfo]):
    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]
                           ) -> BatchFeature:
        # A Llama checkpoint has no ECG processor: the ECGs are already model input.
        ecgs = hf_data.get("ecgs") or []
        return BatchFeature({"ecg_values": torch.stack(list(ecgs))}, tensor_type="pt")

    def _get_mm_fields_config(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
                              ) -> Mapping[str, MultiModalFieldConfig]:
        return {"ecg_values": MultiModalFieldConfig.batched(MODALITY)}

    def _get_prompt_updates(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, object],
                            out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]:
        ecg_id = self.info.get_ecg_token_id()
        n = ecg_token_count(self.info.get_hf_config())
        return [PromptReplacement(modality=MODALITY, target=[ecg_id], replacement=[ecg_id] * n)]


# === Model === #
@MULTIMODAL_REGISTRY.register_processor(EcgLlavaMultiModalProcessor, info=EcgLlavaProcessingInfo,
                                        dummy_inputs=EcgLlavaDummyInputsBuilder)
class EcgLlavaForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsLoRA):
    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }
    # peft adapters of the bare HF LM (after vLLM strips "base_model.model."): rename into
    # the language model. The specific prefix first (WeightsMapper applies every match in order).
    hf_to_vllm_mapper = WeightsMapper(orig_to_new_prefix={
        "model.": "language_model.model.",
        "lm_head.": "language_model.lm_head.",
    })

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith(MODALITY):
            return "<ecg>"
        raise ValueError(f"only the {MODALITY!r} modality is supported, got {modality!r}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: EcgLlavaConfig = vllm_config.model_config.hf_config
        self.config = config
        self.n_ecg_tokens = ecg_token_count(config)
        if config.ecg_token_id is not None:
            self.configure_mm_token_handling(vocab_size=config.text_config.vocab_size,
                                             mm_token_ids=[int(config.ecg_token_id)])
        with self._mark_tower_model(vllm_config, MODALITY):
            self.ecg_tower = build_ecg_tower(config)          # ecgbatch's EcgTransformer, frozen
            self.projector = build_projector(config)          # Sequential(Linear[, GELU, Linear])
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=getattr(config.text_config, "architectures", None) or ["LlamaForCausalLM"])
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def _parse_and_validate_ecg_input(self, **kwargs: object) -> EcgLlavaEcgInputs | None:
        ecg_values = kwargs.pop("ecg_values", None)
        if ecg_values is None:
            return None
        if isinstance(ecg_values, (list, tuple)):
            ecg_values = torch.stack(list(ecg_values))
        tower = self.config.tower_cfg
        return EcgLlavaEcgInputs(type="ecg_values", ecg_values=ecg_values,
                                 resolve_bindings={"l": tower.lead_num, "t": tower.seq_length})

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        ecg_input = self._parse_and_validate_ecg_input(**kwargs)
        if ecg_input is None:
            return []
        x = ecg_input["ecg_values"]                                   # [B, leads, samples]
        feats = self.ecg_tower.transformer_output(x)                  # [B, N, W] before ln_post
        embeds = self.projector(feats.to(self.projector[0].weight.dtype))   # [B, N, H]
        return list(torch.unbind(embeds, dim=0))

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs: object):
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors,
                                         inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights)

    def get_mm_mapping(self) -> MultiModelKeys:
        return MultiModelKeys.from_string_field(language_model="language_model",
                                                connector="projector", tower_model="ecg_tower")
