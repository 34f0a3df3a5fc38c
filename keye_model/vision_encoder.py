"""SigLIP-shaped ViT over native-resolution images, packed into one sequence (SPEC section 1).

Input contract (the processor produces exactly this):
- ``pixel_values`` (N, C*p*p) float: the patches of every image, each image's patches in raster order
  over its (h/p, w/p) patch grid, each patch flattened as (C, p, p); images concatenated in the order
  their placeholder tokens appear in ``input_ids`` (row-major over the batch);
- ``grid_hw`` (I, 2) long: (h/p, w/p) per image or video frame, same order; sum(h*w) == N.

Positions: the learned G x G absolute table (G = position_grid_size) interpolated bilinearly
(align_corners=False, no antialias: our choice) to each (h, w) grid, plus the 2D rotary embedding of
``rope.py`` on q and k (``use_rope_2d``). Attention is block-diagonal: a patch sees only patches of its
own image. Kernels: a boolean SDPA mask built from cu_seqlens (CPU; memory N^2), a per-image SDPA loop,
or torch's varlen flash kernel (``torch.nn.attention.varlen.varlen_attn``; CUDA, fp16/bf16).

Worked example of the packing: grid_hw [[2, 4], [4, 2]] -> 8 + 8 patches, cu_seqlens [0, 8, 16];
patch 10 is image 1, row 1, col 0.

Module and parameter names mirror transformers' SiglipVisionModel (embeddings.patch_embedding,
embeddings.position_embedding, encoder.layers.N.{self_attn.{q,k,v,out}_proj, layer_norm1, layer_norm2,
mlp.fc1, mlp.fc2}, post_layernorm), so a SigLIP checkpoint loads by dropping the ``vision_model.`` prefix
(``VisionEncoder.from_siglip``); the pooling head is ignored.

Legend: N packed patches, D hidden, P = C*p*p patch values, I images, H heads, Hd head dim.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers.activations import ACT2FN

from keye_model.config import VisionConfig
from keye_model.rope import apply_rope, vision_rope_angles


def check_visual_inputs(pixel_values_NP: torch.Tensor, grid_hw_I2: torch.Tensor, patch_dim: int) -> None:
    """ValueError naming the mismatch when pixel_values and grid_hw break the input contract."""
    if pixel_values_NP.dim() != 2 or pixel_values_NP.shape[1] != patch_dim:
        raise ValueError(f"pixel_values must be (num_patches, {patch_dim}), got {tuple(pixel_values_NP.shape)}")
    if grid_hw_I2.dim() != 2 or grid_hw_I2.shape[1] != 2 or grid_hw_I2.is_floating_point():
        raise ValueError(f"grid_hw must be an integer (num_images, 2) tensor, got {tuple(grid_hw_I2.shape)}")
    if bool((grid_hw_I2 <= 0).any()):
        raise ValueError(f"grid_hw has a non-positive side: {grid_hw_I2.tolist()}")
    num_patches = int(grid_hw_I2.prod(dim=-1).sum())
    if num_patches != pixel_values_NP.shape[0]:
        raise ValueError(
            f"grid_hw {grid_hw_I2.tolist()} accounts for {num_patches} patches but pixel_values has "
            f"{pixel_values_NP.shape[0]}"
        )


def cu_seqlens(grid_hw_I2: torch.Tensor) -> torch.Tensor:
    """(I+1,) int32 cumulative patch counts: [[2, 4], [4, 2]] -> [0, 8, 16]."""
    lengths = grid_hw_I2.prod(dim=-1)
    return F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)


class VisionEmbeddings(nn.Module):
    """Patch embedding (a Conv2d weight applied as a Linear on flattened patches) + positions."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = nn.Conv2d(
            cfg.num_channels, cfg.hidden_size, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )
        self.position_embedding = nn.Embedding(cfg.position_grid_size**2, cfg.hidden_size)

    def forward(self, pixel_values_NP: torch.Tensor, grid_hw_I2: torch.Tensor) -> torch.Tensor:
        # Call the Conv2d module (not its weight) so that ZeRO-3 gathers its partitioned parameters.
        p, c = self.cfg.patch_size, self.cfg.num_channels
        patches_NCpp = pixel_values_NP.reshape(-1, c, p, p).to(self.patch_embedding.weight.dtype)
        x_ND = self.patch_embedding(patches_NCpp).flatten(1)
        return x_ND + self.positions(grid_hw_I2).to(x_ND.dtype)

    def positions(self, grid_hw_I2: torch.Tensor) -> torch.Tensor:
        """(N, D) absolute position embeddings, the G x G table resized to each image's grid."""
        g = self.cfg.position_grid_size
        # Through the module's forward (not .weight) so that ZeRO-3 gathers the table.
        table_GGD = self.position_embedding(torch.arange(g * g, device=self.position_embedding.weight.device))
        resized: dict[tuple[int, int], torch.Tensor] = {}  # per call only: video frames share sizes
        parts = []
        for h, w in grid_hw_I2.tolist():
            if (h, w) not in resized:
                if (h, w) == (g, g):
                    resized[h, w] = table_GGD
                else:
                    grid_1DGG = table_GGD.float().reshape(g, g, -1).permute(2, 0, 1)[None]
                    out_1Dhw = F.interpolate(grid_1DGG, size=(h, w), mode="bilinear", align_corners=False)
                    resized[h, w] = out_1Dhw[0].flatten(1).T.to(table_GGD.dtype)
            parts.append(resized[h, w])
        return torch.cat(parts)


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x_ND: torch.Tensor, cu_seqlens_I1: torch.Tensor, angles_NHd: torch.Tensor | None) -> torch.Tensor:
        n = x_ND.shape[0]
        heads, hd = self.cfg.num_attention_heads, self.cfg.head_dim
        q_NHHd = self.q_proj(x_ND).view(n, heads, hd)
        k_NHHd = self.k_proj(x_ND).view(n, heads, hd)
        v_NHHd = self.v_proj(x_ND).view(n, heads, hd)
        if angles_NHd is not None:
            q_NHHd = apply_rope(q_NHHd, angles_NHd)
            k_NHHd = apply_rope(k_NHHd, angles_NHd)
        out_NHHd = block_diagonal_attention(q_NHHd, k_NHHd, v_NHHd, cu_seqlens_I1, self.cfg.attention)
        return self.out_proj(out_NHHd.reshape(n, heads * hd))


def block_diagonal_attention(
    q_NHHd: torch.Tensor, k_NHHd: torch.Tensor, v_NHHd: torch.Tensor, cu_I1: torch.Tensor, kernel: str
) -> torch.Tensor:
    """Softmax attention that stays inside each [cu[i], cu[i+1]) block; returns (N, H, Hd)."""
    if kernel == "auto":
        kernel = "varlen" if q_NHHd.is_cuda and q_NHHd.dtype in (torch.float16, torch.bfloat16) else "loop"
    if kernel == "varlen":
        from torch.nn.attention.varlen import varlen_attn

        cu = cu_I1.to(device=q_NHHd.device, dtype=torch.int32)
        max_len = int((cu[1:] - cu[:-1]).max())
        return varlen_attn(q_NHHd, k_NHHd, v_NHHd, cu, cu, max_len, max_len)
    q_1HNHd, k_1HNHd, v_1HNHd = (t.transpose(0, 1)[None] for t in (q_NHHd, k_NHHd, v_NHHd))
    if kernel == "mask":
        lengths = (cu_I1[1:] - cu_I1[:-1]).long().to(q_NHHd.device)
        image_N = torch.repeat_interleave(torch.arange(len(lengths), device=q_NHHd.device), lengths)
        mask_NN = image_N[:, None] == image_N[None, :]
        out_1HNHd = F.scaled_dot_product_attention(q_1HNHd, k_1HNHd, v_1HNHd, attn_mask=mask_NN)
        return out_1HNHd[0].transpose(0, 1)
    assert kernel == "loop", kernel
    # One SDPA call per distinct image length, the images of that length stacked as a batch: video
    # frames share a size, so a whole video is one call, with no N x N mask.
    # Example: cu = [0, 4, 8, 14] -> lengths 4, 4, 6 -> one call on 2 images of 4, one on 1 of 6.
    bounds = cu_I1.tolist()
    starts, lengths = bounds[:-1], [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    out_NHHd = torch.empty_like(q_NHHd)
    for length in sorted(set(lengths)):
        index = torch.cat([torch.arange(s, s + length) for s, n in zip(starts, lengths) if n == length])
        index = index.to(q_NHHd.device)
        q, k, v = (t[index].reshape(-1, length, *t.shape[1:]).transpose(1, 2) for t in (q_NHHd, k_NHHd, v_NHHd))
        out_NHHd[index] = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(-1, *q_NHHd.shape[1:])
    return out_NHHd


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = ACT2FN[cfg.hidden_act]
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionEncoderLayer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = VisionAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = VisionMLP(cfg)

    def forward(self, x_ND: torch.Tensor, cu_I1: torch.Tensor, angles_NHd: torch.Tensor | None) -> torch.Tensor:
        x_ND = x_ND + self.self_attn(self.layer_norm1(x_ND), cu_I1, angles_NHd)
        return x_ND + self.mlp(self.layer_norm2(x_ND))


class VisionLayers(nn.Module):
    """Holds ``layers`` so parameter names read ``encoder.layers.N...`` as in SigLIP."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(VisionEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


class VisionEncoder(nn.Module):
    """Packed native-resolution ViT: (pixel_values (N, P), grid_hw (I, 2)) -> features (N, D)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = VisionEmbeddings(cfg)
        self.encoder = VisionLayers(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixel_values_NP: torch.Tensor, grid_hw_I2: torch.Tensor) -> torch.Tensor:
        check_visual_inputs(pixel_values_NP, grid_hw_I2, self.cfg.patch_dim)
        cu_I1 = cu_seqlens(grid_hw_I2)
        angles_NHd = None
        if self.cfg.use_rope_2d:
            angles_NHd = vision_rope_angles(grid_hw_I2, self.cfg.head_dim, self.cfg.rope_theta)
        x_ND = self.embeddings(pixel_values_NP, grid_hw_I2)
        for layer in self.encoder.layers:
            x_ND = layer(x_ND, cu_I1, angles_NHd)
        return self.post_layernorm(x_ND)

    # ---- SigLIP checkpoints ---------------------------------------------------------------------
    @classmethod
    def from_siglip(cls, directory: str | Path, cfg: VisionConfig | None = None) -> VisionEncoder:
        """Build from a local SiglipVisionModel / SiglipModel ``save_pretrained`` directory.

        ``cfg`` defaults to the directory's shape (``vision_config_from_siglip``) with 2D RoPE on; pass
        one to choose flags such as ``use_rope_2d`` (its shape must match the checkpoint).
        """
        encoder = cls(cfg if cfg is not None else vision_config_from_siglip(directory))
        encoder.load_siglip(directory)
        return encoder

    def load_siglip(self, directory: str | Path) -> None:
        """Copy a local SigLIP checkpoint's vision weights into this module (strict, shapes checked)."""
        state = siglip_state_dict(directory)
        own = self.state_dict()
        wrong = {
            k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and v.shape != own[k].shape
        }
        if wrong:
            raise ValueError(f"SigLIP checkpoint {directory} does not fit VisionConfig: (ckpt, ours) {wrong}")
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"SigLIP checkpoint {directory}: missing keys {missing}, unexpected keys {unexpected}")


def _read_safetensors_dir(directory: Path) -> dict[str, torch.Tensor]:
    single = directory / "model.safetensors"
    if single.is_file():
        return load_file(single)
    index = directory / "model.safetensors.index.json"
    if not index.is_file():
        raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {directory}")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        state.update(load_file(directory / shard))
    return state


def siglip_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """The vision tower's weights under our names: drop ``vision_model.``; skip text, head, buffers."""
    out = {}
    for key, value in _read_safetensors_dir(Path(directory)).items():
        if key.startswith(("text_model.", "logit_scale", "logit_bias")):
            continue
        key = key.removeprefix("vision_model.")
        if key.startswith("head.") or key.endswith("position_ids"):
            continue
        out[key] = value
    return out


def vision_config_from_siglip(directory: str | Path, **overrides) -> VisionConfig:
    """A VisionConfig with the shape of a local SigLIP directory's config.json (fields may be overridden)."""
    from transformers import SiglipVisionConfig

    hf = SiglipVisionConfig.from_pretrained(str(directory), local_files_only=True)
    if isinstance(hf.image_size, (list, tuple)) or isinstance(hf.patch_size, (list, tuple)):
        raise ValueError(f"SigLIP config in {directory}: only square image_size/patch_size are supported")
    fields = dict(
        hidden_size=hf.hidden_size,
        num_hidden_layers=hf.num_hidden_layers,
        num_attention_heads=hf.num_attention_heads,
        intermediate_size=hf.intermediate_size,
        hidden_act=hf.hidden_act,
        layer_norm_eps=hf.layer_norm_eps,
        patch_size=hf.patch_size,
        num_channels=hf.num_channels,
        position_grid_size=hf.image_size // hf.patch_size,
    )
    fields.update(overrides)
    return VisionConfig(**fields)
