"""KeyeProcessor on real photographs, an easy-vqa image and real videos: placeholders, pixels, labels."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import easy_vqa
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from keye_model import special_tokens as st
from keye_model.geometry import fit_size
from keye_model.losses import IGNORE_INDEX
from keye_model.processor import KeyeProcessor, ProcessorConfig
from keye_model.tokenizer import tiny_tokenizer

SKIMAGE_DIR = Path(skimage.data.__file__).parent
COFFEE_PNG = SKIMAGE_DIR / "coffee.png"  # 400 x 600 photograph, passed as a path
EASY_VQA_IMAGE = Path(easy_vqa.get_test_image_paths()[0])  # 64 x 64 png


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def proc(tok):
    return KeyeProcessor(tok, ProcessorConfig())


def tid(tok, token):
    return tok.convert_tokens_to_ids(token)


def image_question(image, question="what is in the image?", answer="a photo"):
    return [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": answer},
    ]


def normalized(pixels):
    return (pixels.astype(np.float32) / 255.0 - 0.5) / 0.5


def test_real_images_placeholders_match_grids_and_patches(tok, proc):
    astronaut = skimage.data.astronaut()  # 512 x 512 array
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": astronaut},
                {"type": "image", "image": str(COFFEE_PNG)},
                {"type": "text", "text": "and this one?"},
                {"type": "image", "image": Image.open(EASY_VQA_IMAGE)},
            ],
        },
        {"role": "assistant", "content": "an astronaut, coffee and a shape"},
    ]
    batch = proc([conversation])
    sizes = [fit_size(512, 512, 4, 20_480), fit_size(400, 600, 4, 20_480), fit_size(64, 64, 4, 20_480)]
    assert sizes == [(504, 504), (392, 588), (56, 56)]
    assert batch["grid_hw"].tolist() == [[h // 14, w // 14] for h, w in sizes]
    assert batch["grid_hw"].dtype == torch.long
    expected_tokens = sum((h // 28) * (w // 28) for h, w in sizes)
    assert expected_tokens == 324 + 294 + 4
    ids = batch["input_ids"][0]
    assert (ids == tid(tok, st.IMAGE_PAD)).sum().item() == expected_tokens
    assert (ids == tid(tok, st.VISION_START)).sum().item() == 3 == (ids == tid(tok, st.VISION_END)).sum().item()
    pixel_values = batch["pixel_values"]
    assert pixel_values.dtype == torch.float32
    assert pixel_values.shape == (sum(h * w // 196 for h, w in sizes), 3 * 14 * 14)
    assert pixel_values.min() >= -1.0 and pixel_values.max() <= 1.0
    # Each image's pads sit in one block between its vision markers, in input order.
    starts = (ids == tid(tok, st.VISION_START)).nonzero().flatten().tolist()
    ends = (ids == tid(tok, st.VISION_END)).nonzero().flatten().tolist()
    assert [e - s - 1 for s, e in zip(starts, ends)] == [(h // 28) * (w // 28) for h, w in sizes]
    # The easy-vqa image (last) is the last 16 rows: its bicubic 56x56 resize, normalized.
    resized = np.asarray(Image.open(EASY_VQA_IMAGE).convert("RGB").resize((56, 56), Image.Resampling.BICUBIC))
    first_patch = normalized(resized[:14, :14]).transpose(2, 0, 1).reshape(-1)
    np.testing.assert_allclose(pixel_values[-16].numpy(), first_patch, atol=1e-6)


def test_patch_raster_order_on_a_tiny_image(proc):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(56, 84, 3), dtype=np.uint8)  # 2x3 tokens: no resize
    batch = proc([image_question(image)])
    assert batch["grid_hw"].tolist() == [[4, 6]]
    rows = []
    for r in range(4):
        for c in range(6):
            patch = image[r * 14 : (r + 1) * 14, c * 14 : (c + 1) * 14, :]  # 14 x 14 x 3
            rows.append(
                [(patch[y, x, ch] / 255.0 - 0.5) / 0.5 for ch in range(3) for y in range(14) for x in range(14)]
            )
    np.testing.assert_allclose(batch["pixel_values"].numpy(), np.asarray(rows, dtype=np.float32), atol=1e-6)


def test_small_and_huge_images_respect_token_limits(tok):
    proc = KeyeProcessor(tok, ProcessorConfig(image_min_tokens=16, image_max_tokens=64))
    small = np.zeros((30, 30, 3), dtype=np.uint8)
    big = skimage.data.astronaut()
    batch = proc([image_question(small), image_question(big)])
    tokens = [(h // 2) * (w // 2) for h, w in batch["grid_hw"].tolist()]
    assert tokens == [16, 64]


def test_labels_cover_only_assistant_responses(tok, proc):
    conversation = [
        {"role": "system", "content": "Answer briefly."},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": str(EASY_VQA_IMAGE)},
                {"type": "text", "text": "what shape is it? /no_think"},
            ],
        },
        {"role": "assistant", "content": "circle"},
        {"role": "user", "content": "and its color?"},
        {"role": "assistant", "content": "blue", "reasoning_content": "the fill is blue"},
    ]
    batch = proc([conversation])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    counted = labels != IGNORE_INDEX
    assert torch.equal(labels[counted], ids[counted])
    assert proc.decode(ids[counted]) == "circle<|im_end|><think>\nthe fill is blue\n</think>\n\nblue<|im_end|>"
    # The pre-filled empty think block of the /no_think turn is prompt, not response.
    text = proc.decode(ids)
    assert "<|im_start|>assistant\n<think>\n\n</think>\n\ncircle" in text
    assert batch["attention_mask"].all()


def test_ids_equal_tokenizing_the_expanded_text(tok, proc):
    conversation = image_question(str(COFFEE_PNG), "describe /think", "a cup")
    batch = proc([conversation])
    text = proc.render(conversation).replace(st.IMAGE_PAD, st.IMAGE_PAD * 294)
    assert batch["input_ids"][0].tolist() == tok.encode(text, add_special_tokens=False)
    text_only = [{"role": "user", "content": "what color is the circle?"}, {"role": "assistant", "content": "red"}]
    assert proc([text_only])["input_ids"][0].tolist() == tok.apply_chat_template(
        text_only, tokenize=True, return_dict=False
    )


def test_batch_is_right_padded_and_media_concatenated_in_order(tok, proc):
    long_conv = image_question(
        skimage.data.astronaut(),
        "what is this person wearing in the photo?",
        "a white space suit with a helmet and flags",
    )
    short_conv = image_question(str(EASY_VQA_IMAGE), "shape?", "circle")
    text_conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    singles = [proc([c]) for c in (long_conv, short_conv, text_conv)]
    batch = proc([long_conv, short_conv, text_conv])
    lengths = [s["input_ids"].shape[1] for s in singles]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for row, (single, n) in enumerate(zip(singles, lengths)):
        assert torch.equal(batch["input_ids"][row, :n], single["input_ids"][0])
        assert torch.equal(batch["labels"][row, :n], single["labels"][0])
        assert (batch["input_ids"][row, n:] == tok.pad_token_id).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert (batch["attention_mask"][row, n:] == 0).all()
    assert torch.equal(batch["pixel_values"], torch.cat([s["pixel_values"] for s in singles]))
    assert torch.equal(batch["grid_hw"], torch.cat([s["grid_hw"] for s in singles]))
    assert singles[2]["pixel_values"].shape == (0, 588) and singles[2]["grid_hw"].shape == (0, 2)


def test_build_prompt_and_decode_helpers(tok, proc):
    prompt = proc.build_prompt(image_question(str(EASY_VQA_IMAGE))[:1], enable_thinking=False)
    assert "labels" not in prompt
    assert proc.decode(prompt["input_ids"][0]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert prompt["grid_hw"].tolist() == [[4, 4]]
    generated = tok.encode("<think>\nround\n</think>\n\ncircle<|im_end|>\nleftover", add_special_tokens=False)
    assert proc.decode_response(generated) == "<think>\nround\n</think>\n\ncircle"
    assert proc.parse_response(torch.tensor(generated)) == ("round", "circle")


def test_prompts_for_batched_generation_are_left_padded_and_repeated(tok, proc):
    questions = [
        image_question(str(EASY_VQA_IMAGE), "what shape is in the image?")[:1],
        [{"role": "user", "content": "hi"}],
    ]
    singles = [proc.build_prompt(q) for q in questions]
    batch = proc.build_prompts(questions, repeat=2)
    lengths = [s["input_ids"].shape[1] for s in singles]
    assert batch["input_ids"].shape == (4, max(lengths)) and "labels" not in batch
    for row in range(4):
        single, n = singles[row // 2], lengths[row // 2]
        assert torch.equal(batch["input_ids"][row, -n:], single["input_ids"][0])  # every prompt ends in the last column
        assert batch["attention_mask"][row].tolist() == [0] * (max(lengths) - n) + [1] * n
        assert (batch["input_ids"][row, : max(lengths) - n] == tok.pad_token_id).all()
    assert torch.equal(batch["pixel_values"], torch.cat([singles[0]["pixel_values"]] * 2))
    assert batch["grid_hw"].tolist() == singles[0]["grid_hw"].tolist() * 2
    with pytest.raises(ValueError, match="q-missing: .*cannot read image"):
        proc.build_prompts([image_question("/no/such.png", "shape?")[:1]], sample_ids=["q-missing"])


def test_bad_inputs_raise_errors_naming_the_sample(tmp_path, proc):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"clip-7 message 0 part 0: cannot read image .*broken\.png"):
        proc([image_question(str(broken))], sample_ids=["clip-7"])
    with pytest.raises(ValueError, match=r"sample 1 .*missing\.png"):
        proc([image_question(str(EASY_VQA_IMAGE)), image_question(str(tmp_path / "missing.png"))])
    with pytest.raises(ValueError, match=r"sample 0 message 0 part 0: image \(ndarray\): aspect ratio"):
        proc([image_question(np.zeros((10, 2100, 3), dtype=np.uint8))])
    with pytest.raises(ValueError, match="uint8"):
        proc([image_question(np.zeros((56, 56, 3), dtype=np.float32))])
    with pytest.raises(ValueError, match="sample 0 message 1: need a dict with role"):
        proc([[{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]])
    with pytest.raises(ValueError, match="literal"):
        proc(
            [
                [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "image": str(EASY_VQA_IMAGE)},
                            {"type": "text", "text": f"spot the {st.IMAGE_PAD}"},
                        ],
                    }
                ]
            ]
        )
    with pytest.raises(ValueError, match="system and user messages only"):
        proc(
            [
                [
                    {"role": "user", "content": "draw"},
                    {"role": "assistant", "content": [{"type": "image", "image": str(EASY_VQA_IMAGE)}]},
                ]
            ]
        )
    with pytest.raises(ValueError, match="a list of conversations"):
        proc(image_question(str(EASY_VQA_IMAGE)))


# ----- video -------------------------------------------------------------------------------------


def hand_plan(frames):
    """A plan built by hand, read the way the processor reads slow_fast.VideoPlan (.frames)."""
    planned = [
        SimpleNamespace(index=i, time=t, kind=k, tokens=(h // 28) * (w // 28), height=h, width=w)
        for i, (t, k, h, w) in enumerate(frames)
    ]
    return SimpleNamespace(frames=planned, total_tokens=sum(f.tokens for f in planned))


def test_video_with_hand_built_plan_emits_markers_timestamps_and_pads(tok, proc, photos):
    plan = hand_plan([(0.0, "slow", 56, 56), (0.5, "fast", 28, 28), (1.0, "slow", 56, 84)])
    sources = [photos["astronaut"], photos["astronaut"], photos["coffee"]]
    frames = [np.asarray(Image.fromarray(p).resize((f.width, f.height))) for p, f in zip(sources, plan.frames)]
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "video", "video": "clip.mp4", "plan": plan, "frames": frames},
                {"type": "text", "text": "what happens?"},
            ],
        },
        {"role": "assistant", "content": "a cut to coffee at 1.0 s"},
    ]
    batch = proc([conversation])
    ids = batch["input_ids"][0].tolist()
    start = ids.index(tid(tok, st.VISION_START))
    end = ids.index(tid(tok, st.VISION_END))

    def num(text):
        return tok.encode(text, add_special_tokens=False)

    pad, frame = tid(tok, st.VIDEO_PAD), tid(tok, st.FRAME)
    assert ids[start + 1 : end] == (
        [frame, *num("0.0"), *[pad] * 4]
        + [frame, *num("0.5"), tid(tok, st.FAST_START), pad, tid(tok, st.FAST_END)]
        + [frame, *num("1.0"), *[pad] * 6]
    )
    assert batch["grid_hw"].tolist() == [[4, 4], [2, 2], [4, 6]]
    assert batch["pixel_values"].shape[0] == 16 + 4 + 24
    np.testing.assert_allclose(
        batch["pixel_values"][20].numpy(), normalized(frames[2][:14, :14]).transpose(2, 0, 1).reshape(-1), atol=1e-6
    )
    assert (batch["labels"][0, start : end + 1] == IGNORE_INDEX).all()


def test_video_plan_inconsistencies_are_named(proc, photos):
    plan = hand_plan([(0.0, "slow", 56, 56)])
    plan.frames[0].tokens = 5
    part = {"type": "video", "video": "bad.mp4", "plan": plan, "frames": [np.zeros((56, 56, 3), np.uint8)]}
    with pytest.raises(ValueError, match="bad.mp4 frame 0: planned 5 tokens"):
        proc([[{"role": "user", "content": [part]}]])
    part["frames"] = [np.zeros((28, 56, 3), np.uint8)]
    with pytest.raises(ValueError, match=r"bad.mp4 frame 0: pixels of shape \(28, 56, 3\)"):
        proc([[{"role": "user", "content": [part]}]])


def video_tokens(tok, ids):
    """Split the ids between <|vision_start|> and <|vision_end|> into per-frame (timestamp, kind, pads)."""
    ids = ids.tolist()
    body = ids[ids.index(tid(tok, st.VISION_START)) + 1 : ids.index(tid(tok, st.VISION_END))]
    frame, pad = tid(tok, st.FRAME), tid(tok, st.VIDEO_PAD)
    assert body[0] == frame
    chunks, current = [], []
    for token in body[1:] + [frame]:
        if token == frame:
            chunks.append(current)
            current = []
        else:
            current.append(token)
    parsed = []
    for chunk in chunks:
        first_pad = next(i for i, t in enumerate(chunk) if t in (pad, tid(tok, st.FAST_START)))
        timestamp, rest = tok.decode(chunk[:first_pad]), chunk[first_pad:]
        if rest[0] == tid(tok, st.FAST_START):
            assert rest[-1] == tid(tok, st.FAST_END)
            parsed.append((timestamp, "fast", rest[1:-1]))
        else:
            parsed.append((timestamp, "slow", rest))
        assert set(parsed[-1][2]) == {pad}
    return [(timestamp, kind, len(pads)) for timestamp, kind, pads in parsed]


def test_real_video_follows_its_slow_fast_plan(tok, photos, scene_video):
    from dataclasses import replace

    from keye_model.slow_fast import SlowFastConfig, load_planned_frames, plan_video

    video = scene_video([(photos["astronaut"], 4), (photos["coffee"], 3)], fps=2.0)
    slow_fast = replace(SlowFastConfig.preset("tiny"), budget_tokens=400, max_tokens=64)
    proc = KeyeProcessor(tok, ProcessorConfig(video=slow_fast))
    plan = plan_video(video.path, slow_fast)
    assert {f.kind for f in plan.frames} == {"slow", "fast"}  # both frame kinds are exercised
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": str(EASY_VQA_IMAGE)},
                {"type": "video", "video": str(video.path)},
                {"type": "text", "text": "when does the scene change?"},
            ],
        },
        {"role": "assistant", "content": "at 2.0 s"},
    ]
    batch = proc([conversation])  # plans and decodes the video itself
    ids = batch["input_ids"][0]
    after_image = ids[(ids == tid(tok, st.VISION_END)).nonzero()[0, 0] + 1 :]  # the image's block comes first
    assert video_tokens(tok, after_image) == [(f"{f.time:.1f}", f.kind, f.tokens) for f in plan.frames]
    assert (ids == tid(tok, st.VIDEO_PAD)).sum().item() == plan.total_tokens
    assert batch["grid_hw"].tolist() == [[4, 4]] + [[f.height // 14, f.width // 14] for f in plan.frames]
    assert batch["pixel_values"].shape[0] == 16 + sum(f.height * f.width // 196 for f in plan.frames)
    frames = load_planned_frames(video.path, plan)
    np.testing.assert_allclose(
        batch["pixel_values"][16].numpy(), normalized(frames[0][:14, :14]).transpose(2, 0, 1).reshape(-1), atol=1e-6
    )
    # A plan given with the sample (or its JSON form) gives the same tensors.
    conversation[0]["content"][1]["plan"] = plan.to_dict()
    again = proc([conversation])
    assert torch.equal(again["input_ids"], batch["input_ids"])
    assert torch.equal(again["pixel_values"], batch["pixel_values"])


def test_unreadable_video_is_named(tmp_path, proc):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"sample 0 message 0 part 0: video .*broken\.mp4"):
        proc([[{"role": "user", "content": [{"type": "video", "video": str(broken)}]}]])
