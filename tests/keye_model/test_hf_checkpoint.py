"""Saved models load the Hugging Face way, in a clean process that cannot import this project.

One subprocess (cwd elsewhere, the repo off sys.path, and an import hook refusing every package of this
project, since the editable install would otherwise map them) loads the folder with plain transformers:
``AutoModelForCausalLM`` on ``language_model/``, ``AutoConfig`` / ``AutoModel`` / ``AutoProcessor`` with
``trust_remote_code``; it writes what it computed to a file, and this process compares.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import skimage.data
import torch
from safetensors.torch import load_file

from keye_model import special_tokens as st
from keye_model.config import KeyeConfig
from keye_model.hf_export import LANGUAGE_MODEL_DIR, MODEL_TYPE
from keye_model.model import WEIGHTS_FILE, KeyeForConditionalGeneration
from keye_model.processor import KeyeProcessor, ProcessorConfig
from keye_model.tokenizer import tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("keye_model", "data_specs", "tasks", "flows", "keye_cli", "benchmarks", "tests")

CLEAN_SCRIPT = r"""
import json, sys

PROJECT, REPO = set(sys.argv[3].split(",")), sys.argv[4]


class RefuseProject:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in PROJECT:
            raise ModuleNotFoundError(f"clean process: no import of the project ({name})")
        return None


sys.meta_path.insert(0, RefuseProject())
sys.path = [p for p in sys.path if p and p.rstrip("/") != REPO]

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor

folder, io_file = sys.argv[1], sys.argv[2]
inputs = torch.load(io_file + ".in", weights_only=False)  # holds a numpy image
out, info = {}, {}
with torch.no_grad():
    lm, lm_info = AutoModelForCausalLM.from_pretrained(folder + "/language_model", output_loading_info=True)
    out["lm_logits"] = lm(inputs["text_ids"]).logits
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model, model_info = AutoModel.from_pretrained(folder, trust_remote_code=True, output_loading_info=True)
    out["logits"] = model(**inputs["batch"]).logits
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    for key, value in processor([inputs["conversation"]]).items():
        out["processed_" + key] = value
info["classes"] = [type(x).__module__ + "." + type(x).__name__ for x in (lm, config, model, processor)]
info["model_type"] = config.model_type
info["loading"] = {k: sorted(map(str, v)) for name, i in (("lm", lm_info), ("model", model_info))
                   for k, v in [(name + "_" + key, i[key]) for key in ("missing_keys", "unexpected_keys")]}
info["project_modules"] = sorted(m for m in sys.modules if m.split(".")[0] in PROJECT)
torch.save(out, io_file + ".out")
print("RESULT " + json.dumps(info))
"""


#: Not the defaults: whatever loads the checkpoint must read images as the model was trained to.
TRAINED_WITH = ProcessorConfig(image_min_tokens=16)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny model saved the way the runner saves it (model with the processor settings it was trained
    with, then tokenizer), and a multimodal input."""
    tok = tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    ids = {
        name: tok.convert_tokens_to_ids(token)
        for name, token in (("image_token_id", st.IMAGE_PAD), ("video_token_id", st.VIDEO_PAD))
    }
    torch.manual_seed(0)
    model = KeyeForConditionalGeneration(dataclasses.replace(KeyeConfig.preset("tiny"), **ids)).eval()
    folder = tmp_path_factory.mktemp("ckpt") / "keye-tiny"
    model.save_pretrained(folder, processor_config=TRAINED_WITH)
    tok.save_pretrained(folder)
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": skimage.data.astronaut()[::8, ::8]},
                {"type": "text", "text": "what is in the image?"},
            ],
        },
        {"role": "assistant", "content": "an astronaut"},
    ]
    return model, tok, folder, conversation


def test_clean_process_loads_the_checkpoint_with_plain_transformers(saved, tmp_path):
    model, tok, folder, conversation = saved
    batch = KeyeProcessor(tok, TRAINED_WITH)([conversation])
    text_ids = tok(["a photo of an astronaut, and some more words"], return_tensors="pt")["input_ids"]
    model_inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "grid_hw")}
    io_file = tmp_path / "io"
    torch.save({"text_ids": text_ids, "batch": model_inputs, "conversation": conversation}, f"{io_file}.in")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "hf_modules"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    run = subprocess.run(
        [sys.executable, "-c", CLEAN_SCRIPT, str(folder), str(io_file), ",".join(PROJECT_PACKAGES), str(REPO)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert "Do you wish" not in run.stdout  # no interactive trust prompt on the way
    info = json.loads(run.stdout.split("RESULT ")[-1])
    out = torch.load(f"{io_file}.out")
    assert info["project_modules"] == []
    lm_class, config_class, model_class, processor_class = info["classes"]
    assert lm_class.endswith("qwen3.modeling_qwen3.Qwen3ForCausalLM")
    assert config_class.startswith("transformers_modules.") and config_class.endswith(".KeyeVLConfig")
    assert model_class.startswith("transformers_modules.") and model_class.endswith(".KeyeVLForConditionalGeneration")
    assert processor_class.endswith(".KeyeVLProcessor") and info["model_type"] == MODEL_TYPE
    assert all(keys == [] for keys in info["loading"].values()), info["loading"]
    with torch.no_grad():
        # Plain Qwen3 on language_model/ is exactly our LLM on text tokens.
        torch.testing.assert_close(out["lm_logits"], model.language_model(text_ids).logits, rtol=0, atol=0)
        # The remote-code model is exactly ours on an image + text input.
        torch.testing.assert_close(out["logits"], model(**model_inputs).logits, rtol=0, atol=0)
    for key, value in batch.items():
        assert torch.equal(out["processed_" + key], value), key


def test_the_processor_settings_travel_with_the_checkpoint(saved, tmp_path):
    _, _, folder, _ = saved
    assert ProcessorConfig.load(folder) == TRAINED_WITH
    assert ProcessorConfig.load(tmp_path) == ProcessorConfig()  # a folder without the file: the defaults


def test_folder_layout_and_both_layouts_load_in_our_class(saved, tmp_path):
    model, _, folder, _ = saved
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == MODEL_TYPE and config["auto_map"]["AutoModel"].startswith("modeling_keye.")
    assert KeyeConfig.from_dict(config["keye"]) == model.config
    # language_model/ holds the language_model.* tensors, renamed, and nothing else.
    ours = {
        k.removeprefix("language_model."): v
        for k, v in load_file(folder / WEIGHTS_FILE).items()
        if k.startswith("language_model.")
    }
    lm = load_file(folder / LANGUAGE_MODEL_DIR / WEIGHTS_FILE)
    assert sorted(lm) == sorted(ours) and all(torch.equal(lm[k], ours[k]) for k in lm)
    # The copied code imports nothing from the project by absolute name.
    for source in folder.glob("*.py"):
        assert not any(
            line.lstrip().startswith(("from keye_model", "import keye_model"))
            for line in source.read_text().splitlines()
        ), source.name
    # Old checkpoints (keye_config.json + model.safetensors only) and new ones both load.
    old = model.save_pretrained(tmp_path / "old", hf_files=False)
    assert sorted(p.name for p in old.iterdir()) == ["keye_config.json", WEIGHTS_FILE]
    ids = torch.randint(20, 4000, (1, 12))
    with torch.no_grad():
        expected = model(ids).logits
        for directory in (old, folder):
            loaded = KeyeForConditionalGeneration.from_pretrained(directory)
            assert loaded.config == model.config
            torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=0)
