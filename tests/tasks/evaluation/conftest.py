"""A tiny randomly initialized Keye checkpoint (model + tokenizer in one directory) and photo videos."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from keye_model.config import KeyeConfig
from keye_model.model import KeyeForConditionalGeneration
from keye_model.tokenizer import tiny_tokenizer

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory) -> str:
    """What the stage runner writes: keye_config.json, model.safetensors and the tokenizer files."""
    tokenizer = tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    config = dataclasses.replace(
        KeyeConfig.preset("tiny"),
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
    )
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("checkpoint")
    KeyeForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def eval_model(checkpoint_dir):
    from tasks.evaluation.answering import EvalModel

    return EvalModel.load(checkpoint_dir, video_preset="tiny")


def photo(name: str, size: tuple[int, int] = (56, 56)) -> np.ndarray:
    import skimage.data

    image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.uint8)


@pytest.fixture
def photo_video(tmp_path):
    """Factory: photo_video(name, photos, frames_per_photo=2, fps=2.0) -> Path of tmp_path/videos/<name>.mp4
    showing each photo for ``frames_per_photo`` frames (hard cuts between photos)."""
    from keye_model.video import encode_video

    def build(name: str, names: tuple[str, ...], frames_per_photo: int = 2, fps: float = 2.0):
        frames = [photo(p) for p in names for _ in range(frames_per_photo)]
        return encode_video(np.stack(frames), tmp_path / "videos" / f"{name}.mp4", fps=fps)

    return build
