"""M-RoPE: 3D position ids (parity with transformers' Qwen2-VL get_rope_index), the rotary module (parity
with Qwen2-VL's), and the model using them in training (packed rows), generation (KV cache) and theta resets."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from transformers import Qwen2VLConfig, Qwen2VLModel
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from keye_model.config import KeyeConfig, TextConfig
from keye_model.decoder import qwen3_config
from keye_model.model import KeyeForConditionalGeneration
from keye_model.mrope import MultimodalRotaryEmbedding, mrope_position_ids, text_position_ids
from keye_model.training.packing import Encoded, pack

# Placeholder ids as a tokenizer would assign them (tests have no tokenizer; ids are config, not constants).
IMAGE_ID, VIDEO_ID, PAD_ID = 11, 12, 0
PLACEHOLDERS = (IMAGE_ID, VIDEO_ID)


def tiny_config(**text_changes) -> KeyeConfig:
    config = dataclasses.replace(KeyeConfig.preset("tiny"), image_token_id=IMAGE_ID, video_token_id=VIDEO_ID)
    return dataclasses.replace(config, text=dataclasses.replace(config.text, **text_changes))


def tokens(*parts) -> torch.Tensor:
    """parts: an int n = n text tokens (ids 20..), or (placeholder id, count)."""
    out = []
    for part in parts:
        if isinstance(part, int):
            out += [20 + (len(out) * 7 + k) % 4000 for k in range(part)]
        else:
            out += [part[0]] * part[1]
    return torch.tensor(out)


def test_the_worked_example() -> None:
    ids = tokens(2, (IMAGE_ID, 6), 2)[None]
    pos = mrope_position_ids(ids, torch.tensor([[4, 6]]), placeholder_ids=PLACEHOLDERS, merge_size=2)
    assert pos[:, 0].tolist() == [
        [0, 1, 2, 2, 2, 2, 2, 2, 5, 6],
        [0, 1, 2, 2, 2, 3, 3, 3, 5, 6],
        [0, 1, 2, 3, 4, 2, 3, 4, 5, 6],
    ]


def tiny_qwen2_vl() -> Qwen2VLModel:
    torch.manual_seed(0)
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=4096,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=32,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=1, spatial_merge_size=2),
    )
    return Qwen2VLModel(config).eval()


def test_positions_match_qwen2_vl_get_rope_index() -> None:
    """Images and single-frame videos (Slow/Fast frames) between text, a left-padded row, same token layout."""
    row0 = tokens(3, (IMAGE_ID, 6), 2, (VIDEO_ID, 2), 2, (VIDEO_ID, 4), 3)
    row1 = torch.cat([torch.full((3,), PAD_ID), tokens(2, (IMAGE_ID, 6), 11)])
    input_ids = torch.stack([row0, row1])
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = 0
    mm_types = torch.zeros_like(input_ids)
    mm_types[input_ids == IMAGE_ID] = 1
    mm_types[input_ids == VIDEO_ID] = 2
    # Our grid_hw: every image/frame in placeholder order, row-major over the batch.
    grid_hw = torch.tensor([[4, 6], [2, 4], [4, 4], [6, 4]])
    expected, deltas = tiny_qwen2_vl().get_rope_index(
        input_ids,
        mm_token_type_ids=mm_types,
        image_grid_thw=torch.tensor([[1, 4, 6], [1, 6, 4]]),
        video_grid_thw=torch.tensor([[1, 2, 4], [1, 4, 4]]),
        attention_mask=attention_mask,
    )
    ours = mrope_position_ids(
        input_ids,
        grid_hw,
        placeholder_ids=PLACEHOLDERS,
        merge_size=2,
        position_ids_BL=text_position_ids(attention_mask),
    )
    assert torch.equal(ours, expected)
    # Generation continues every axis from the last token + 1: Qwen2-VL's max + 1 (= real length + delta).
    real = attention_mask.sum(-1, keepdim=True)
    assert torch.equal(ours[:, :, -1:] + 1, (real + deltas).expand(3, -1, -1))


def test_packed_samples_restart_and_bad_layouts_are_named() -> None:
    a, b = tokens(1, (IMAGE_ID, 4), 2), tokens(2, (VIDEO_ID, 2), 1, (IMAGE_ID, 6), 1)
    grids_a, grids_b = torch.tensor([[4, 4]]), torch.tensor([[2, 4], [4, 6]])
    alone = [
        mrope_position_ids(x[None], g, placeholder_ids=PLACEHOLDERS, merge_size=2)[:, 0]
        for x, g in ((a, grids_a), (b, grids_b))
    ]
    packed = pack(
        [Encoded("a", a, a, torch.zeros(16, 588), grids_a), Encoded("b", b, b, torch.zeros(32, 588), grids_b)],
        seq_len=64,
        pad_id=PAD_ID,
    )
    pos = mrope_position_ids(
        packed.input_ids,
        packed.grid_hw,
        placeholder_ids=PLACEHOLDERS,
        merge_size=2,
        position_ids_BL=packed.position_ids,
    )
    assert torch.equal(pos[:, 0], torch.cat(alone, dim=-1))
    with pytest.raises(ValueError, match=r"image/frame 1 \(merged grid 2x4\) needs 8 consecutive placeholders from"):
        mrope_position_ids(b[None], torch.tensor([[2, 4], [4, 8]]), placeholder_ids=PLACEHOLDERS, merge_size=2)
    with pytest.raises(ValueError, match="grid_hw holds 3 images/frames but the placeholders fill 2"):
        mrope_position_ids(b[None], torch.tensor([[2, 4], [4, 6], [2, 2]]), placeholder_ids=PLACEHOLDERS, merge_size=2)
    split = torch.tensor([[0, 1, 2, 0, 1, 2, 3]])  # a new sample starts inside the image
    with pytest.raises(ValueError, match="crosses a sample boundary at token 3"):
        mrope_position_ids(
            tokens(1, (IMAGE_ID, 4), 2)[None],
            grids_a,
            placeholder_ids=PLACEHOLDERS,
            merge_size=2,
            position_ids_BL=split,
        )


def test_rotary_module_matches_qwen2_vl() -> None:
    text = tiny_config().text
    ours = MultimodalRotaryEmbedding(qwen3_config(text), text.mrope_section)
    reference = Qwen2VLRotaryEmbedding(
        Qwen2VLTextConfig(
            hidden_size=text.hidden_size,  # head_dim = 128 / 4 = 32, as ours
            num_attention_heads=text.num_attention_heads,
            num_key_value_heads=text.num_key_value_heads,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": text.rope_theta,
                "mrope_section": list(text.mrope_section),
            },
        )
    )
    positions = torch.randint(0, 5000, (3, 2, 7))
    x = torch.zeros(1, dtype=torch.float32)
    for got, want in zip(ours(x, positions), reference(x, positions)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # Text (t = h = w) is exactly 1D RoPE.
    plain = Qwen3RotaryEmbedding(qwen3_config(text))
    for got, want in zip(ours(x, positions[0]), plain(x, positions[0])):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"sums to 15, but the decoder has 16 rotary frequencies"):
        MultimodalRotaryEmbedding(qwen3_config(text), (4, 6, 5))
    with pytest.raises(ValueError, match=r"summing to head_dim / 2 = 16"):
        TextConfig(head_dim=32, num_attention_heads=4, num_key_value_heads=2, mrope_section=(16, 24, 24))


@pytest.fixture(scope="module")
def models() -> tuple[KeyeForConditionalGeneration, KeyeForConditionalGeneration]:
    """The tiny model with M-RoPE and the same weights with 1D RoPE."""
    torch.manual_seed(0)
    mrope = KeyeForConditionalGeneration(tiny_config()).eval()
    plain = KeyeForConditionalGeneration(tiny_config(mrope_section=()), init=False).eval()
    plain.load_state_dict(mrope.state_dict())
    return mrope, plain


def sample(seed: int, *parts, grids) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    grid_hw = torch.as_tensor(grids, dtype=torch.long).reshape(-1, 2)
    ids = tokens(*parts)
    text = ~torch.isin(ids, torch.tensor(PLACEHOLDERS))
    ids[text] = torch.randint(20, 4096, (int(text.sum()),), generator=g)
    return ids, torch.randn(int(grid_hw.prod(-1).sum()), 588, generator=g), grid_hw


def test_model_uses_mrope_for_images_and_1d_rope_for_text(models) -> None:
    mrope, plain = models
    assert isinstance(mrope.language_model.model.rotary_emb, MultimodalRotaryEmbedding)
    assert type(plain.language_model.model.rotary_emb) is Qwen3RotaryEmbedding
    text = torch.randint(20, 4096, (2, 12))
    ids, pixels, grid_hw = sample(1, 3, (IMAGE_ID, 6), 4, grids=[[4, 6]])
    with torch.no_grad():
        torch.testing.assert_close(mrope(text).logits, plain(text).logits, rtol=0, atol=0)
        with_image, with_image_1d = (
            mrope(ids[None], pixel_values=pixels, grid_hw=grid_hw).logits,
            plain(ids[None], pixel_values=pixels, grid_hw=grid_hw).logits,
        )
    # The text after the image sees it at other relative positions (before it, all is text: the same).
    torch.testing.assert_close(with_image[:, :4], with_image_1d[:, :4])
    assert (with_image[:, 9:] - with_image_1d[:, 9:]).abs().max() > 1e-3


def test_packed_rows_compute_each_sample_alone(models) -> None:
    mrope, _ = models
    samples = [
        sample(2, 3, (IMAGE_ID, 4), 5, grids=[[4, 4]]),
        sample(3, 2, (VIDEO_ID, 2), 2, (VIDEO_ID, 6), 3, grids=[[2, 4], [4, 6]]),
        sample(4, 6, grids=[]),
    ]
    encoded = [Encoded(f"s{i}", ids, ids, px, g) for i, (ids, px, g) in enumerate(samples)]
    packed = pack(encoded, seq_len=64, pad_id=PAD_ID)
    assert packed.input_ids.shape[0] == 1
    with torch.no_grad():
        logits = mrope(**{k: v for k, v in packed.model_inputs().items() if k != "labels"}).logits[0]
        start = 0
        for ids, pixels, grid_hw in samples:
            media = dict(pixel_values=pixels, grid_hw=grid_hw) if grid_hw.numel() else {}
            alone = mrope(ids[None], **media).logits[0]
            torch.testing.assert_close(logits[start : start + len(ids)], alone, rtol=1e-4, atol=1e-5)
            start += len(ids)


def test_generate_with_kv_cache_matches_full_forwards(models) -> None:
    mrope, _ = models
    ids, pixels, grid_hw = sample(5, 2, (IMAGE_ID, 6), 2, (VIDEO_ID, 2), 3, grids=[[4, 6], [2, 4]])
    out = mrope.generate(
        ids[None],
        pixel_values=pixels,
        grid_hw=grid_hw,
        max_new_tokens=4,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
    )
    sequence = out.sequences
    assert sequence.shape == (1, len(ids) + 4)
    with torch.no_grad():
        full = mrope(sequence, pixel_values=pixels, grid_hw=grid_hw).logits[0]
    for step, step_logits in enumerate(out.logits):
        torch.testing.assert_close(step_logits[0], full[len(ids) - 1 + step], rtol=1e-4, atol=1e-5)


def test_rope_theta_reset_keeps_mrope(models) -> None:
    mrope, _ = models
    ids, pixels, grid_hw = sample(6, 2, (IMAGE_ID, 6), 4, grids=[[4, 6]])
    model = KeyeForConditionalGeneration(tiny_config(), init=False).eval()
    model.load_state_dict(mrope.state_dict())
    model.set_rope_theta(8_000_000.0)
    assert isinstance(model.language_model.model.rotary_emb, MultimodalRotaryEmbedding)
    fresh = KeyeForConditionalGeneration(tiny_config(rope_theta=8_000_000.0), init=False).eval()
    fresh.load_state_dict(mrope.state_dict())
    with torch.no_grad():
        after = model(ids[None], pixel_values=pixels, grid_hw=grid_hw).logits
        torch.testing.assert_close(after, fresh(ids[None], pixel_values=pixels, grid_hw=grid_hw).logits)
        before = mrope(ids[None], pixel_values=pixels, grid_hw=grid_hw).logits
    assert (after - before).abs().max() > 1e-4


def test_configs_saved_before_mrope_load_with_1d_rope(models, tmp_path) -> None:
    _, plain = models
    data = tiny_config().to_dict()
    del data["text"]["mrope_section"]
    old = KeyeConfig.from_dict(data)
    assert old.text.mrope_section == () and tiny_config().text.mrope_section == (4, 6, 6)
    assert KeyeConfig.from_json(tiny_config().to_json()) == tiny_config()
    plain.save_pretrained(tmp_path / "old", hf_files=False)
    (tmp_path / "old" / "keye_config.json").write_text(json.dumps(data), encoding="ascii")
    loaded = KeyeForConditionalGeneration.from_pretrained(tmp_path / "old")
    assert type(loaded.language_model.model.rotary_emb) is Qwen3RotaryEmbedding
    ids, pixels, grid_hw = sample(7, 2, (IMAGE_ID, 4), 3, grids=[[4, 4]])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(ids[None], pixel_values=pixels, grid_hw=grid_hw).logits,
            plain(ids[None], pixel_values=pixels, grid_hw=grid_hw).logits,
            rtol=0,
            atol=0,
        )
