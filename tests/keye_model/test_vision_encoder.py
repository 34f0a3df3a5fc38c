"""The packed native-resolution ViT: SigLIP parity, positions, block-diagonal attention, loading."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import SiglipConfig, SiglipModel, SiglipVisionConfig, SiglipVisionModel

from keye_model.config import VisionConfig
from keye_model.vision_encoder import VisionEncoder, cu_seqlens, vision_config_from_siglip

PATCH = 14


def siglip_config(**overrides) -> SiglipVisionConfig:
    fields = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=56,
        patch_size=PATCH,
    )
    fields.update(overrides)
    return SiglipVisionConfig(**fields)


def to_pixels(photo: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(1, 3, height, width) in [-1, 1] from an RGB uint8 photo (SigLIP normalisation)."""
    x = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)


def to_patches(image_13HW: torch.Tensor) -> torch.Tensor:
    """(h*w, 3*14*14): raster order over the patch grid, each patch flattened as (C, 14, 14)."""
    _, c, height, width = image_13HW.shape
    h, w = height // PATCH, width // PATCH
    x = image_13HW[0].reshape(c, h, PATCH, w, PATCH).permute(1, 3, 0, 2, 4)
    return x.reshape(h * w, c * PATCH * PATCH)


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = SiglipVisionModel(siglip_config()).eval()  # the pooling head is saved and must be ignored
    path = tmp_path_factory.mktemp("siglip")
    model.save_pretrained(path)
    return path, model


def test_parity_with_siglip_at_native_size(siglip_dir, photos) -> None:
    path, reference = siglip_dir
    ours = VisionEncoder.from_siglip(path, dataclasses.replace(vision_config_from_siglip(path), use_rope_2d=False))
    images = [to_pixels(photos[name], 56, 56) for name in ("astronaut", "coffee")]
    with torch.no_grad():
        expected = [reference(pixel_values=img).last_hidden_state[0] for img in images]
        # both images packed into one sequence: each must match SigLIP run on it alone
        packed = ours(torch.cat([to_patches(img) for img in images]), torch.tensor([[4, 4], [4, 4]]))
    torch.testing.assert_close(packed[:16], expected[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(packed[16:], expected[1], rtol=1e-4, atol=1e-4)


def test_config_and_weights_read_from_the_directory(siglip_dir) -> None:
    path, reference = siglip_dir
    cfg = vision_config_from_siglip(path)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.position_grid_size, cfg.use_rope_2d) == (64, 2, 4, True)
    ours = VisionEncoder.from_siglip(path)
    ref_state = reference.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, ref_state[key]), key


def test_loads_a_full_siglip_model_directory(tmp_path) -> None:
    torch.manual_seed(1)
    full = SiglipModel(
        SiglipConfig(
            vision_config=siglip_config().to_dict(),
            text_config=dict(
                hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=100
            ),
        )
    )
    full.save_pretrained(tmp_path)
    ours = VisionEncoder.from_siglip(tmp_path)
    reference = full.vision_model.encoder.layers[1].mlp.fc2.weight
    torch.testing.assert_close(ours.encoder.layers[1].mlp.fc2.weight, reference)


def test_shape_mismatch_names_the_checkpoint(siglip_dir) -> None:
    path, _ = siglip_dir
    with pytest.raises(ValueError, match="does not fit VisionConfig"):
        VisionEncoder.from_siglip(path, dataclasses.replace(vision_config_from_siglip(path), intermediate_size=96))


def tiny_encoder(**overrides) -> VisionEncoder:
    torch.manual_seed(0)
    cfg = VisionConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        position_grid_size=4,
        **overrides,
    )
    return VisionEncoder(cfg).eval()


@pytest.mark.parametrize("kernel", ["mask", "loop"])
def test_no_attention_across_images(kernel: str) -> None:
    encoder = tiny_encoder(attention=kernel)
    grid = torch.tensor([[2, 4], [4, 6], [2, 2]])
    a, b, c = torch.randn(8, 588), torch.randn(24, 588), torch.randn(4, 588)
    with torch.no_grad():
        first = encoder(torch.cat([a, b, c]), grid)
        changed = encoder(torch.cat([a, torch.randn(24, 588), c]), grid)
        alone = encoder(a, grid[:1])
    torch.testing.assert_close(first[:8], changed[:8], rtol=0, atol=0)
    torch.testing.assert_close(first[32:], changed[32:], rtol=0, atol=0)
    assert not torch.allclose(first[8:32], changed[8:32])
    torch.testing.assert_close(first[:8], alone, rtol=1e-5, atol=1e-5)


def test_mask_and_loop_kernels_agree() -> None:
    grid = torch.tensor([[2, 4], [4, 6]])
    x = torch.randn(32, 588)
    with torch.no_grad():
        torch.testing.assert_close(
            tiny_encoder(attention="mask")(x, grid), tiny_encoder(attention="loop")(x, grid), rtol=1e-5, atol=1e-5
        )


def test_rope_makes_outputs_depend_on_layout() -> None:
    # Same patches, grid 2x4 vs 4x2: the absolute table differs too, so zero it to isolate RoPE.
    x = torch.randn(8, 588)
    with_rope, without = tiny_encoder(), tiny_encoder(use_rope_2d=False)
    for enc in (with_rope, without):
        torch.nn.init.zeros_(enc.embeddings.position_embedding.weight)
    with torch.no_grad():
        assert not torch.allclose(with_rope(x, torch.tensor([[2, 4]])), with_rope(x, torch.tensor([[4, 2]])), atol=1e-5)
        torch.testing.assert_close(without(x, torch.tensor([[2, 4]])), without(x, torch.tensor([[4, 2]])))


def test_positions_are_bilinear_resizes_of_the_table() -> None:
    emb = tiny_encoder().embeddings
    table = emb.position_embedding.weight.detach().reshape(4, 4, -1)
    with torch.no_grad():
        native = emb.positions(torch.tensor([[4, 4]]))
        halved = emb.positions(torch.tensor([[2, 2], [4, 4]]))
    torch.testing.assert_close(native, table.reshape(16, -1), rtol=0, atol=0)
    # halving with align_corners=False samples the centre of each 2x2 block: their mean
    block_mean = table.reshape(2, 2, 2, 2, -1).mean(dim=(1, 3)).reshape(4, -1)
    torch.testing.assert_close(halved[:4], block_mean)
    torch.testing.assert_close(halved[4:], native)


def test_patch_embedding_is_the_conv2d() -> None:
    emb = tiny_encoder().embeddings
    image = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        conv = emb.patch_embedding(image).flatten(2).transpose(1, 2)[0]
        ours = emb(to_patches(image), torch.tensor([[2, 3]])) - emb.positions(torch.tensor([[2, 3]]))
    torch.testing.assert_close(ours, conv, rtol=1e-5, atol=1e-5)


def test_input_contract_errors() -> None:
    encoder = tiny_encoder()
    with pytest.raises(ValueError, match=r"accounts for 8 patches but pixel_values has 9"):
        encoder(torch.randn(9, 588), torch.tensor([[2, 4]]))
    with pytest.raises(ValueError, match=r"pixel_values must be \(num_patches, 588\)"):
        encoder(torch.randn(8, 3, 14, 14), torch.tensor([[2, 4]]))
    with pytest.raises(ValueError, match="integer"):
        encoder(torch.randn(8, 588), torch.tensor([[2.0, 4.0]]))
    assert cu_seqlens(torch.tensor([[2, 4], [4, 2]])).tolist() == [0, 8, 16]
