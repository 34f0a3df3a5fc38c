"""KeyeConfig presets, validation and the JSON round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest

from keye_model.config import CONFIG_FILE, KeyeConfig, TextConfig, VisionConfig, keye_8b, tiny


@pytest.mark.parametrize("name", ["tiny", "keye-8b"])
def test_json_round_trip(name: str, tmp_path) -> None:
    cfg = dataclasses.replace(KeyeConfig.preset(name), image_token_id=7, video_token_id=8)
    assert KeyeConfig.from_json(cfg.to_json()) == cfg
    path = cfg.save(tmp_path / "model")
    assert path.name == CONFIG_FILE
    assert KeyeConfig.load(tmp_path / "model") == cfg
    assert json.loads(path.read_text())["text"]["rope_theta"] == cfg.text.rope_theta


def test_keye_8b_shapes() -> None:
    cfg = keye_8b()
    v, t = cfg.vision, cfg.text
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.intermediate_size) == (1152, 27, 16, 4304)
    assert v.head_dim == 72 and v.patch_dim == 588 and v.position_grid_size == 27
    assert (v.hidden_act, v.layer_norm_eps, v.rope_theta, v.use_rope_2d) == ("gelu_pytorch_tanh", 1e-6, 10_000.0, True)
    assert (cfg.projector.merge_size, cfg.projector.layer_norm_eps, cfg.projector.hidden_act) == (2, 1e-5, "gelu")
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads) == (4096, 36, 32, 8)
    assert (t.head_dim, t.intermediate_size, t.vocab_size, t.rms_norm_eps) == (128, 12288, 151_936, 1e-6)
    assert t.rope_theta == 1_000_000.0 and not t.tie_word_embeddings
    assert cfg.image_token_id is None and cfg.video_token_id is None  # from the tokenizer, never a preset


def test_tiny_is_small_and_variants_replace_fields() -> None:
    cfg = tiny()
    assert cfg.text.vocab_size == 4096 and cfg.image_token_id is None
    longer = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, rope_theta=8_000_000.0))
    assert longer.text.rope_theta == 8_000_000.0 and cfg.text.rope_theta == 1_000_000.0
    assert longer.vision == cfg.vision


def test_errors_name_what_failed() -> None:
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        KeyeConfig.preset("huge")
    data = tiny().to_dict()
    data["text"]["rope_base"] = 5.0
    with pytest.raises(ValueError, match=r"KeyeConfig.text: unknown field\(s\) \['rope_base'\]"):
        KeyeConfig.from_dict(data)
    with pytest.raises(ValueError, match="image_token_id 5000 is outside the text vocabulary"):
        dataclasses.replace(tiny(), image_token_id=5000)
    with pytest.raises(ValueError, match="head_dim divisible by 4"):
        VisionConfig(hidden_size=60, num_attention_heads=10)
    with pytest.raises(ValueError, match="num_key_value_heads 3"):
        TextConfig(num_attention_heads=32, num_key_value_heads=3)
    with pytest.raises(ValueError, match="attention 'flash'"):
        VisionConfig(attention="flash")
    with pytest.raises(FileNotFoundError, match=CONFIG_FILE):
        KeyeConfig.load("/nonexistent/keye")
