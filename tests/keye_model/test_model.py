"""KeyeForConditionalGeneration: loading parts, placeholders, loss, freezing, generate, persistence."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM, SiglipVisionConfig, SiglipVisionModel

from keye_model.config import KeyeConfig
from keye_model.decoder import text_config_from_qwen3
from keye_model.model import GROUPS, KeyeForConditionalGeneration, causal_lm_loss
from keye_model.vision_encoder import vision_config_from_siglip

# Placeholder ids as a tokenizer would assign them (tests have no tokenizer; ids are config, not constants).
IMAGE_ID, VIDEO_ID = 11, 12


def tiny_config() -> KeyeConfig:
    return dataclasses.replace(KeyeConfig.preset("tiny"), image_token_id=IMAGE_ID, video_token_id=VIDEO_ID)


@pytest.fixture(scope="module")
def model() -> KeyeForConditionalGeneration:
    torch.manual_seed(0)
    return KeyeForConditionalGeneration(tiny_config())


def multimodal_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Two rows: row 0 has an image (grid 4x6 -> 6 tokens) and two video frames (2x4 -> 2 tokens each);
    row 1 has one image (4x4 -> 4 tokens). Images in placeholder order, row-major over the batch."""
    g = torch.Generator().manual_seed(seed)
    grid_hw = torch.tensor([[4, 6], [2, 4], [2, 4], [4, 4]])
    pixel_values = torch.randn(int(grid_hw.prod(-1).sum()), 588, generator=g)
    input_ids = torch.randint(20, 4096, (2, 24), generator=g)
    input_ids[0, 1:7] = IMAGE_ID
    input_ids[0, 9:11] = VIDEO_ID  # frame 0
    input_ids[0, 13:15] = VIDEO_ID  # frame 1 (timestamp text between frames)
    input_ids[1, 3:7] = IMAGE_ID
    labels = input_ids.clone()
    labels[:, :16] = -100  # response tokens only
    return dict(input_ids=input_ids, labels=labels, pixel_values=pixel_values, grid_hw=grid_hw)


def test_tiny_size_and_forward_backward(model) -> None:
    assert 1_000_000 < model.num_parameters() < 5_000_000
    assert sum(model.num_parameters(g) for g in GROUPS) == model.num_parameters()
    batch = multimodal_batch()
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    assert out.logits.shape == (2, 24, 4096) and torch.isfinite(out.loss)
    for name in GROUPS:
        assert all(p.grad is not None for p in model.group(name).parameters()), name


def test_features_land_on_the_placeholders_in_order(model) -> None:
    batch = multimodal_batch()
    with torch.no_grad():
        embeds = model.embed_inputs(batch["input_ids"], batch["pixel_values"], batch["grid_hw"])
        features = model.get_visual_features(batch["pixel_values"], batch["grid_hw"])
        text = model.language_model.get_input_embeddings()(batch["input_ids"])
    assert features.shape == (6 + 2 + 2 + 4, 128)
    torch.testing.assert_close(embeds[0, 1:7], features[:6])
    torch.testing.assert_close(embeds[0, 9:11], features[6:8])
    torch.testing.assert_close(embeds[0, 13:15], features[8:10])
    torch.testing.assert_close(embeds[1, 3:7], features[10:])
    mask = model.placeholder_mask(batch["input_ids"])
    torch.testing.assert_close(embeds[~mask], text[~mask])


def test_placeholder_count_mismatch_is_a_clear_error(model) -> None:
    batch = multimodal_batch()
    batch["input_ids"][1, 7] = IMAGE_ID
    with pytest.raises(ValueError, match=r"hold 15 placeholder tokens .* gives 14 visual tokens"):
        model(**batch)
    with pytest.raises(ValueError, match="no pixel_values"):
        model(batch["input_ids"])


def test_loss_is_shifted_and_masked(model) -> None:
    batch = multimodal_batch()
    with torch.no_grad():
        out = model(**batch)
        logits = out.logits
        response_logits = logits[:, 15:23].reshape(-1, 4096)  # logits[t] predicts labels[t + 1]
        expected = torch.nn.functional.cross_entropy(response_logits, batch["labels"][:, 16:].reshape(-1))
        torch.testing.assert_close(out.loss, expected)
        # the prompt's labels are ignored whatever they hold
        other = dict(batch, labels=batch["labels"].clone())
        other["labels"][:, :16] = -100
        torch.testing.assert_close(model(**other).loss, out.loss)
    assert causal_lm_loss(logits, torch.full_like(batch["labels"], -100)).item() == 0.0


def test_frozen_groups_stay_bit_identical() -> None:
    torch.manual_seed(0)
    model = KeyeForConditionalGeneration(tiny_config())
    model.set_trainable("projector")  # stage 1
    assert model.trainable_groups() == ("projector",)
    assert model.num_parameters(trainable_only=True) == model.num_parameters("projector")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**multimodal_batch()).loss.backward()
    optimizer.step()
    after = model.state_dict()
    for key, value in before.items():
        if key.startswith("projector."):
            continue
        assert torch.equal(value, after[key]), key
    assert not torch.equal(before["projector.linear_1.weight"], after["projector.linear_1.weight"])
    model.set_trainable(["vision", "projector", "llm"])
    model.freeze("vision")
    assert model.trainable_groups() == ("projector", "llm")
    with pytest.raises(ValueError, match=r"unknown parameter group\(s\) \['vit'\]"):
        model.freeze(["vit"])


def test_save_and_load_round_trip(model, tmp_path) -> None:
    model.save_pretrained(tmp_path / "keye")
    loaded = KeyeForConditionalGeneration.from_pretrained(tmp_path / "keye")
    assert loaded.config == model.config
    batch = multimodal_batch(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    half = KeyeForConditionalGeneration.from_pretrained(tmp_path / "keye", dtype=torch.bfloat16)
    assert half.projector.linear_1.weight.dtype == torch.bfloat16
    assert half.language_model.model.rotary_emb.inv_freq.dtype == torch.float32  # frequencies stay exact
    with torch.no_grad():
        assert torch.isfinite(half(**batch).loss)


def test_greedy_generate_matches_step_by_step_argmax(model) -> None:
    batch = multimodal_batch()
    ids = batch["input_ids"][:1, :12]  # image + first frame
    pixel_values, grid_hw = batch["pixel_values"][:32], batch["grid_hw"][:2]
    out = model.generate(ids, pixel_values=pixel_values, grid_hw=grid_hw, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 17) and torch.equal(out[:, :12], ids)
    expected = ids
    with torch.no_grad():
        for _ in range(5):
            logits = model(expected, pixel_values=pixel_values, grid_hw=grid_hw).logits
            expected = torch.cat([expected, logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out, expected)


@pytest.fixture(scope="module")
def part_dirs(tmp_path_factory):
    """A tiny SigLIP and a tiny Qwen3 (transformers classes, random weights) saved with save_pretrained."""
    torch.manual_seed(1)
    siglip = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            image_size=56,
            patch_size=14,
        )
    )
    qwen = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=128,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        )
    )
    root = tmp_path_factory.mktemp("parts")
    siglip.save_pretrained(root / "siglip")
    qwen.save_pretrained(root / "qwen3")
    return root / "siglip", root / "qwen3", siglip.eval(), qwen.eval()


def test_from_parts_loads_both_checkpoints(part_dirs) -> None:
    siglip_dir, qwen_dir, siglip, qwen = part_dirs
    config = KeyeConfig(
        vision=vision_config_from_siglip(siglip_dir),
        text=text_config_from_qwen3(Qwen3Config.from_pretrained(qwen_dir)),
        image_token_id=IMAGE_ID,
        video_token_id=VIDEO_ID,
    )
    model = KeyeForConditionalGeneration.from_parts(config, vision_dir=siglip_dir, llm_dir=qwen_dir).eval()
    for key, value in siglip.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(model.vision.state_dict()[key], value), key
    for key, value in qwen.state_dict().items():
        assert torch.equal(model.language_model.state_dict()[key], value), key
    ids = torch.randint(20, 512, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, qwen(ids).logits)
    wrong = dataclasses.replace(config, text=dataclasses.replace(config.text, intermediate_size=96))
    with pytest.raises(ValueError, match=r"does not fit TextConfig: .*'intermediate_size': \(128, 96\)"):
        KeyeForConditionalGeneration.from_parts(wrong, llm_dir=qwen_dir)


def test_rope_theta_reset_changes_the_decoder(part_dirs) -> None:
    _, qwen_dir, _, qwen = part_dirs
    text = text_config_from_qwen3(Qwen3Config.from_pretrained(qwen_dir))
    assert text.rope_theta == 1e6
    config = KeyeConfig(vision=tiny_config().vision, text=text)
    model = KeyeForConditionalGeneration.from_parts(config, llm_dir=qwen_dir)
    ids = torch.randint(20, 512, (1, 16))
    with torch.no_grad():
        before = model(ids).logits
        model.set_rope_theta(8_000_000.0)
        after = model(ids).logits
    rotary = model.language_model.model.rotary_emb
    torch.testing.assert_close(rotary.inv_freq, 1.0 / 8e6 ** (torch.arange(0, 16, 2).float() / 16))
    assert model.config.text.rope_theta == 8e6
    assert model.language_model.config.rope_parameters["rope_theta"] == 8e6
    assert not torch.allclose(before, after, atol=1e-4)
    # a config that already says 8e6 applies it when loading
    reset = KeyeForConditionalGeneration.from_parts(model.config, llm_dir=qwen_dir)
    with torch.no_grad():
        torch.testing.assert_close(reset(ids).logits, after)


def test_keye_8b_parameter_count() -> None:
    with torch.device("meta"):
        model = KeyeForConditionalGeneration(KeyeConfig.preset("keye-8b"), init=False)
    assert model.num_parameters("llm") == 8_190_735_360  # Qwen3-8B, untied
    assert 400_000_000 < model.num_parameters("vision") < 430_000_000  # so400m tower, no head
    assert model.num_parameters("projector") == 4608 * 2 + 4608 * 4608 + 4608 + 4608 * 4096 + 4096


def test_generate_never_emits_visual_placeholders():
    from keye_model.config import KeyeConfig

    torch.manual_seed(0)
    config = dataclasses.replace(KeyeConfig.preset("tiny"), image_token_id=5, video_token_id=6)
    model = KeyeForConditionalGeneration(config).eval()
    with torch.no_grad():  # make the placeholders the most likely tokens: they must still never come out
        model.language_model.lm_head.bias = None
        model.language_model.lm_head.weight[5:7] *= 50
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=12, do_sample=False)
    assert not set(out[0, 3:].tolist()) & {5, 6}


def test_the_models_parameter_groups_are_the_stage_specs():
    """model.py keeps its own table (its saved remote code imports no data_specs); they must agree."""
    from data_specs.stages import MODULE_GROUPS
    from keye_model.model import GROUPS

    assert GROUPS == MODULE_GROUPS
