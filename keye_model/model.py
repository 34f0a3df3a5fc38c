"""KeyeForConditionalGeneration: ViT -> projector -> placeholder scatter -> Qwen3 (SPEC section 1).

Inputs (from the processor):
- ``input_ids`` (B, L): one ``<|image_pad|>`` / ``<|video_pad|>`` placeholder per visual token;
- ``pixel_values`` (N, C*p*p), ``grid_hw`` (I, 2): see ``vision_encoder.py``; images/frames in the order
  of their placeholders in ``input_ids`` read row-major over the batch;
- ``labels`` (B, L), aligned with ``input_ids`` (NOT shifted) and -100 where no loss is taken; the model
  shifts them (the logits at position t predict labels[t + 1]);
- ``position_ids`` (B, L), optional: 1D positions (packed rows restart them per sample; arange when None).
  With M-RoPE (``config.text.mrope_section``) the model derives the t/h/w positions from them, ``input_ids``
  and ``grid_hw`` (keye_model.mrope), and builds the attention mask from the 1D ones, so callers never
  handle 3D positions.

Worked example: one image with grid_hw (4, 6) -> 24 patches -> 24/4 = 6 visual tokens, so ``input_ids``
must hold exactly 6 placeholders; the 6 projected features replace them in order (masked_scatter).

Parameter groups for freezing and counting: "vision" (``vision``), "projector" (``projector``) and
"llm" (``language_model``). All weight init lives in ``init_weights``.

Legend: B batch, L sequence, E LLM width, M visual tokens, V vocab.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import CausalLMOutputWithPast

from keye_model.config import KeyeConfig
from keye_model.decoder import (
    build_decoder,
    check_decoder_matches,
    load_decoder,
    rope_theta,
    set_rope_theta,
    use_mrope,
)
from keye_model.losses import IGNORE_INDEX
from keye_model.mrope import mrope_position_ids, text_position_ids
from keye_model.packed_attention import ATTENTION, packed_sequence_lengths, use_packed_attention
from keye_model.parts import check_parts
from keye_model.projector import Projector
from keye_model.vision_encoder import VisionEncoder

if TYPE_CHECKING:
    from keye_model.processor import ProcessorConfig

#: The parameter groups, in model order.
GROUPS = ("vision", "projector", "llm")

#: Weights file inside a saved model directory (beside ``keye_config.json``).
WEIGHTS_FILE = "model.safetensors"


def init_weights(module: nn.Module, std: float) -> None:
    """The one init rule: normal(0, std) for linear/conv/embedding weights, zero biases, unit norms."""
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(sub.weight, mean=0.0, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, mean=0.0, std=std)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
        elif type(sub).__name__.endswith("RMSNorm"):
            nn.init.ones_(sub.weight)


def causal_lm_loss(logits_BLV: torch.Tensor, labels_BL: torch.Tensor) -> torch.Tensor:
    """Token-mean cross-entropy of logits[t] against labels[t + 1] where the label is not -100.

    Example: labels [-100, -100, 7, 9] take loss at logits[1] -> 7 and logits[2] -> 9 (mean of 2).
    Zero (with a graph) when no label is set, so an all-prompt batch does not produce NaN.
    """
    logits = logits_BLV[:, :-1].float()
    targets = labels_BL[:, 1:].to(logits.device)
    if not bool((targets != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


class KeyeForConditionalGeneration(nn.Module):
    def __init__(self, config: KeyeConfig, *, language_model: nn.Module | None = None, init: bool = True):
        """Build from ``config``; ``language_model`` supplies an already loaded decoder (kept as is)."""
        super().__init__()
        self.config = config
        self.vision = VisionEncoder(config.vision)
        self.projector = Projector(config.projector, config.vision.hidden_size, config.text.hidden_size)
        built_here = language_model is None
        self.language_model = build_decoder(config.text) if built_here else language_model
        if config.text.mrope_section:
            use_mrope(self.language_model, config.text.mrope_section)
            use_packed_attention(self.language_model)
        if init:
            init_weights(self.vision, config.vision.initializer_range)
            init_weights(self.projector, config.vision.initializer_range)
            if built_here:
                init_weights(self.language_model, config.text.initializer_range)

    # ---- construction and persistence ---------------------------------------------------------
    @classmethod
    def from_parts(
        cls,
        config: KeyeConfig,
        vision_dir: str | Path | None = None,
        llm_dir: str | Path | None = None,
        dtype: torch.dtype | None = None,
    ) -> KeyeForConditionalGeneration:
        """Random projector; ViT from a local SigLIP directory and/or LLM from a local Qwen3 directory.

        The directories are checked first (``keye_model.parts.check_parts``): a missing one is a
        FileNotFoundError, another model type or shape than ``config`` a ValueError naming the directory
        and the differing fields. The LLM's RoPE base is set to ``config.text.rope_theta``.
        """
        check_parts(config, vision_dir, llm_dir)
        language_model = None
        if llm_dir is not None:
            language_model = load_decoder(llm_dir)
            check_decoder_matches(language_model, config.text, str(llm_dir))
            if rope_theta(language_model.config) != config.text.rope_theta:
                set_rope_theta(language_model, config.text.rope_theta)
        model = cls(config, language_model=language_model)
        if vision_dir is not None:
            model.vision.load_siglip(vision_dir)
        return model._cast(dtype)

    def save_pretrained(
        self, directory: str | Path, *, hf_files: bool = True, processor_config: ProcessorConfig | None = None
    ) -> Path:
        """Write ``keye_config.json`` and ``model.safetensors`` into ``directory``; returns it.

        With ``hf_files`` (the default) also the Hugging Face layout (keye_model.hf_export): config.json
        with model_type "keye_vl", processor_config.json (``processor_config``, the one the model was
        trained with; None: the defaults), remote code for AutoConfig / AutoModel / AutoProcessor with
        trust_remote_code, and ``language_model/``, the LLM as a plain Qwen3 checkpoint.
        """
        path = Path(directory)
        self.config.save(path)
        save_model(self, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
        if hf_files:
            from keye_model.hf_export import write_hf_files

            write_hf_files(self, path, processor_config)
        return path

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: torch.dtype | None = None) -> KeyeForConditionalGeneration:
        path = Path(directory)
        if not (path / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"no {WEIGHTS_FILE} in Keye model directory {directory}")
        model = cls(KeyeConfig.load(path), init=False)
        missing, unexpected = load_model(model, str(path / WEIGHTS_FILE), strict=False)
        if missing or unexpected:
            raise ValueError(f"{path / WEIGHTS_FILE}: missing keys {missing}, unexpected keys {unexpected}")
        return model._cast(dtype)

    def _cast(self, dtype: torch.dtype | None) -> KeyeForConditionalGeneration:
        """Cast parameters to ``dtype``, keeping the LLM's rotary frequencies in float32."""
        if dtype is not None:
            self.to(dtype)
            set_rope_theta(self.language_model, self.config.text.rope_theta)
        return self

    @property
    def device(self) -> torch.device:
        return self.language_model.get_input_embeddings().weight.device

    def set_rope_theta(self, theta: float) -> None:
        """Reset the LLM's RoPE base (stage 3: 8,000,000) in the decoder and in ``self.config``."""
        set_rope_theta(self.language_model, theta)
        self.config = dataclasses.replace(
            self.config, text=dataclasses.replace(self.config.text, rope_theta=float(theta))
        )

    # ---- parameter groups -----------------------------------------------------------------------
    def group(self, name: str) -> nn.Module:
        modules = {"vision": self.vision, "projector": self.projector, "llm": self.language_model}
        if name not in modules:
            raise ValueError(f"unknown parameter group {name!r}; groups: {GROUPS}")
        return modules[name]

    def set_trainable(self, groups: str | Iterable[str]) -> None:
        """Exactly ``groups`` train; every other group is frozen (stage 1: ``set_trainable("projector")``)."""
        chosen = _group_names(groups)
        for name in GROUPS:
            self.group(name).requires_grad_(name in chosen)

    def freeze(self, groups: str | Iterable[str]) -> None:
        """Freeze ``groups``; the others keep their state."""
        for name in _group_names(groups):
            self.group(name).requires_grad_(False)

    def unfreeze(self, groups: str | Iterable[str]) -> None:
        for name in _group_names(groups):
            self.group(name).requires_grad_(True)

    def trainable_groups(self) -> tuple[str, ...]:
        """Groups with at least one parameter that requires grad."""
        return tuple(n for n in GROUPS if any(p.requires_grad for p in self.group(n).parameters()))

    def num_parameters(self, group: str | None = None, *, trainable_only: bool = False) -> int:
        """Parameter count of one group, or of the whole model when ``group`` is None."""
        module = self if group is None else self.group(group)
        return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

    # ---- forward ------------------------------------------------------------------------------
    def get_visual_features(self, pixel_values: torch.Tensor, grid_hw: torch.Tensor) -> torch.Tensor:
        """(N, C*p*p) patches + (I, 2) grids -> (M, E) LLM-width tokens, M = sum(h*w) / merge**2."""
        vision_dtype = self.vision.embeddings.patch_embedding.weight.dtype
        frozen = not any(p.requires_grad for p in self.vision.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):  # no activations kept when frozen
            features_ND = self.vision(pixel_values.to(vision_dtype), grid_hw)
        return self.projector(features_ND, grid_hw)

    def placeholder_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) bool, True at image or video placeholder tokens."""
        ids = self.config.placeholder_token_ids
        if not ids:
            return torch.zeros_like(input_ids, dtype=torch.bool)
        return torch.isin(input_ids, torch.tensor(ids, device=input_ids.device))

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        grid_hw: torch.Tensor | None = None,
        visual_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, L, E) token embeddings with the visual features scattered into the placeholders.

        ``visual_features``: ``get_visual_features(pixel_values, grid_hw)`` when the caller has it already
        (decoding without a cache runs the same prompt every step); None computes it."""
        embeds_BLE = self.language_model.get_input_embeddings()(input_ids)
        mask_BL = self.placeholder_mask(input_ids)
        num_placeholders = int(mask_BL.sum())
        if pixel_values is None or pixel_values.numel() == 0:
            if num_placeholders:
                raise ValueError(f"input_ids hold {num_placeholders} visual placeholder tokens but no pixel_values")
            if _several_ranks():
                # ZeRO-3 gathers parameters collectively, module by module: a rank whose batch has no image
                # must still run the vision path, or the ranks' collectives stop matching. One dummy
                # 28x28 image, added times zero, keeps them in step and changes nothing.
                patch_dim = self.config.vision.patch_dim
                dummy = self.get_visual_features(
                    embeds_BLE.new_zeros(4, patch_dim), torch.tensor([[2, 2]], device=embeds_BLE.device)
                )
                embeds_BLE = embeds_BLE + 0.0 * dummy.sum().to(embeds_BLE.dtype)
            return embeds_BLE
        if grid_hw is None:
            raise ValueError("pixel_values were given without grid_hw")
        if not self.config.placeholder_token_ids:
            raise ValueError("pixel_values were given but image_token_id and video_token_id are both unset")
        features_ME = self.get_visual_features(pixel_values, grid_hw) if visual_features is None else visual_features
        if features_ME.shape[0] != num_placeholders:
            raise ValueError(
                f"input_ids hold {num_placeholders} placeholder tokens (image id {self.config.image_token_id}, "
                f"video id {self.config.video_token_id}) but grid_hw {grid_hw.tolist()} gives "
                f"{features_ME.shape[0]} visual tokens"
            )
        mask_BLE = mask_BL[..., None].expand_as(embeds_BLE)
        return embeds_BLE.masked_scatter(mask_BLE, features_ME.to(embeds_BLE.dtype))

    def rope_position_ids(
        self, input_ids: torch.Tensor, grid_hw: torch.Tensor | None, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(3, B, L) M-RoPE t/h/w positions of a batch, from its 1D ``position_ids`` (arange when None)."""
        return mrope_position_ids(
            input_ids,
            grid_hw,
            placeholder_ids=self.config.placeholder_token_ids,
            merge_size=self.config.projector.merge_size,
            position_ids_BL=position_ids,
        )

    def _causal_masks(
        self, embeds_BLE: torch.Tensor, attention_mask: torch.Tensor | None, position_ids_BL: torch.Tensor
    ) -> dict:
        """The decoder's masks from the 1D positions (packed rows: block-causal), as Qwen3Model builds them."""
        config = self.language_model.config
        kwargs = dict(config=config, inputs_embeds=embeds_BLE, attention_mask=attention_mask, cache=None)
        kwargs["position_ids"] = position_ids_BL
        masks = {"full_attention": create_causal_mask(**kwargs)}
        if "sliding_attention" in config.layer_types:
            masks["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
        return masks

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        grid_hw: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool = False,
        visual_features: torch.Tensor | None = None,
    ) -> CausalLMOutputWithPast:
        embeds_BLE = self.embed_inputs(input_ids, pixel_values, grid_hw, visual_features)
        packed = {}
        if self.config.text.mrope_section:
            if position_ids is None:
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
            # The mask needs the 1D positions (sample boundaries), the rotary module the t/h/w ones.
            lengths = None
            if attention_mask is None and self.language_model.config._attn_implementation == ATTENTION:
                lengths = packed_sequence_lengths(position_ids.expand_as(input_ids))
            if lengths is not None:  # packed rows: sample boundaries instead of an L x L mask
                cu, longest = lengths
                packed = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
                attention_mask = dict.fromkeys(self.language_model.config.layer_types)
            else:
                attention_mask = self._causal_masks(embeds_BLE, attention_mask, position_ids)
            position_ids = self.rope_position_ids(input_ids, grid_hw, position_ids)
        out = self.language_model(
            inputs_embeds=embeds_BLE,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **packed,
        )
        loss = causal_lm_loss(out.logits, labels) if labels is not None else None
        return CausalLMOutputWithPast(loss=loss, logits=out.logits, cache=out.cache)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        grid_hw: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """The LM's ``generate`` on the merged embeddings; returns (B, L + new) ids, prompt included."""
        embeds_BLE = self.embed_inputs(input_ids, pixel_values, grid_hw)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # Visual placeholders are inputs only: a generated one would claim visual features that do not exist.
        suppress = sorted(
            set(generate_kwargs.pop("suppress_tokens", None) or ()) | set(self.config.placeholder_token_ids)
        )
        # Ranks stop generating at different lengths; under ZeRO-3 each decoding step gathers parameters
        # collectively, so every rank keeps stepping until all are done.
        generate_kwargs.setdefault("synced_gpus", _several_ranks())
        if self.config.text.mrope_section:
            # The prompt's t/h/w positions; generate extends each axis by the last token's + 1 per new token,
            # which is max + 1 (Qwen2-VL's rule) since a prompt ends with text, where t = h = w = max.
            generate_kwargs["position_ids"] = self.rope_position_ids(
                input_ids, grid_hw, text_position_ids(attention_mask)
            )
        return self.language_model.generate(
            input_ids=input_ids,
            inputs_embeds=embeds_BLE,
            attention_mask=attention_mask,
            suppress_tokens=suppress,
            **generate_kwargs,
        )


def _several_ranks() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def _group_names(groups: str | Iterable[str]) -> set[str]:
    names = {groups} if isinstance(groups, str) else set(groups)
    unknown = sorted(names - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown parameter group(s) {unknown}; groups: {GROUPS}")
    return names
