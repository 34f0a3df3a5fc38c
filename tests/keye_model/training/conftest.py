"""Tiny tokenizer and WebDataset shards (in the sharder's layout) for runner tests."""

from __future__ import annotations

import io
import json

import pytest
import webdataset as wds
from PIL import Image
from skimage import data

from keye_model.tokenizer import tiny_tokenizer

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _png(name: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(getattr(data, name)()).convert("RGB").resize(size).save(buf, "PNG")
    return buf.getvalue()


def _record(key: str, modality: str, task: str, question: str, answer: str, **extra) -> bytes:
    rec = {
        "id": key,
        "source": "skimage",
        "modality": modality,
        "task": task,
        "question": question,
        "answer": answer,
        "media_path": None,
        "meta": extra,
        "tokens": len(question + answer) // 3,
    }
    return json.dumps(rec).encode()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    tiny_tokenizer(path)
    return str(path)


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory):
    """Two shards of 12 samples each: captions/VQA on photographs of several sizes, and text.

    Every record also carries a preference pair and a replay weight so one set serves every objective.
    """
    root = tmp_path_factory.mktemp("shards")
    sizes = [(56, 56), (112, 84), (84, 140)]
    for shard in range(2):
        with wds.TarWriter(str(root / f"stage-{shard:06d}.tar"), mtime=0) as writer:
            for i in range(12):
                key = f"s{shard}-{i:03d}"
                name = PHOTOS[i % len(PHOTOS)]
                pair = {"chosen": f"It shows a {name}.", "rejected": "I cannot tell.", "replay_weight": 1 + i % 3}
                if i % 3 == 2:
                    entry = {
                        "json": _record(
                            key,
                            "text",
                            "instruction",
                            f"Count to {i % 5 + 2}.",
                            " ".join(str(k) for k in range(1, i % 5 + 3)),
                            **pair,
                        )
                    }
                else:
                    entry = {
                        "json": _record(
                            key, "image", "caption", "What is in the picture?", f"A photograph of a {name}.", **pair
                        ),
                        "png": _png(name, sizes[i % len(sizes)]),
                    }
                writer.write({"__key__": key, **entry})
    return root


@pytest.fixture(scope="session")
def shards(shard_dir):
    return tuple(str(p) for p in sorted(shard_dir.glob("*.tar")))


@pytest.fixture(scope="session")
def alternating_shard(tmp_path_factory):
    """One shard of 8 samples alternating image and text-only."""
    path = tmp_path_factory.mktemp("alternating") / "mixed-000000.tar"
    with wds.TarWriter(str(path), mtime=0) as writer:
        for i in range(8):
            key = f"m{i:03d}"
            if i % 2:
                writer.write({"__key__": key, "json": _record(key, "text", "instruction", "Say hi.", "hi")})
            else:
                writer.write(
                    {
                        "__key__": key,
                        "json": _record(key, "image", "caption", "What?", "A cat."),
                        "png": _png("chelsea", (56, 56)),
                    }
                )
    return str(path)
