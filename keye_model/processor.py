"""Turn chat conversations with images and videos into the tensors the Keye model consumes.

Input: a batch of conversations; each is a list of messages ``{"role", "content"}`` with role
system / user / assistant and content a string or a list of parts:
``{"type": "text", "text": str}``, ``{"type": "image", "image": path | PIL.Image | uint8 array}``,
``{"type": "video", "video": path, "plan": VideoPlan or its to_dict() (optional: planned with
config.video when absent), "frames": list of uint8 arrays at the planned sizes (optional, needs
"plan": pre-decoded frames, e.g. from a shard)}``. Assistant messages may carry
``reasoning_content`` (see keye_model.chat). Media may appear in system and user messages only.

Output (one dict of tensors, right padded; shape legend: B conversations, L longest sequence,
P patches of all images and frames, M images plus frames):
- ``input_ids`` (B, L) long, ``attention_mask`` (B, L) long (0 on padding);
- ``labels`` (B, L) long: the token id on assistant response tokens (content and its closing
  ``<|im_end|>``), -100 elsewhere; aligned with input_ids, the loss shifts (keye_model.losses);
- ``pixel_values`` (P, 3*14*14) float32: every image and frame in placeholder order, each as its
  patches in raster order over its (h/14, w/14) grid, a patch flattened as (C, 14, 14), normalized;
- ``grid_hw`` (M, 2) long: (h/14, w/14) per image or frame, in the order their placeholders appear in
  input_ids, row-major over the batch.

Placeholders: an image resized to h x w (keye_model.geometry.fit_size) becomes ``<|vision_start|>``
``<|image_pad|>`` x (h/28)(w/28) ``<|vision_end|>``. A video becomes ``<|vision_start|>``, then per
planned frame ``<|frame|>`` + "%.1f" timestamp text + (Slow) ``<|video_pad|>`` x N or (Fast)
``<|fast_start|>`` ``<|video_pad|>`` x N ``<|fast_end|>``, then ``<|vision_end|>``.

Worked example: a 56x84 image (no resize: 2x3 = 6 tokens >= image_min_tokens 4) gives grid_hw (4, 6),
24 rows of pixel_values (row 7 = patch at grid (1, 1), pixels [14:28, 14:28]) and 6 ``<|image_pad|>``.
A video of a Slow frame at 0.0 s with 4 tokens and a Fast frame at 0.5 s with 1 token gives
``<|vision_start|><|frame|>0.0<|video_pad|>x4<|frame|>0.5<|fast_start|><|video_pad|><|fast_end|><|vision_end|>``
(the timestamp is as many text tokens as the tokenizer makes of "0.5").

How: the conversation is rendered and tokenized by the Keye chat template with one pad per medium
(so ids equal ``tokenizer.apply_chat_template`` exactly, and its ``{% generation %}`` spans give the
labels); then each pad id is expanded in place. Text between special tokens tokenizes independently,
so expanding ids gives the same ids as tokenizing the expanded text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers import PreTrainedTokenizerBase

from keye_model import special_tokens as st
from keye_model.answers import split_thinking
from keye_model.chat import CHAT_TEMPLATE, stop_token_ids, token_id
from keye_model.geometry import fit_size, num_tokens
from keye_model.losses import IGNORE_INDEX
from keye_model.slow_fast import SlowFastConfig, VideoPlan, load_planned_frames, plan_and_load_video

#: The processor settings inside a saved model folder (written by ``keye_model.hf_export``; AutoProcessor
#: reads its auto_map too).
PROCESSOR_FILE = "processor_config.json"

_ROLES = ("system", "user", "assistant")
_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(kw_only=True)
class ProcessorConfig:
    """How images and videos become pixels and placeholder tokens."""

    image_min_tokens: int = 4
    """Fewest LLM tokens for an image (SPEC section 1: images 4..20,480); small images are upscaled."""
    image_max_tokens: int = 20_480
    """Most LLM tokens for an image; larger images are downscaled, keeping their aspect ratio."""
    patch_size: int = 14
    """ViT patch side in pixels."""
    merge_size: int = 2
    """Patches merged per side by the projector; one LLM token covers (patch_size*merge_size)^2 pixels."""
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Per-channel mean subtracted from pixels in [0, 1] (SigLIP: 0.5, so pixels land in [-1, 1])."""
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Per-channel standard deviation the centred pixels are divided by (SigLIP: 0.5)."""
    resample: str = "bicubic"
    """PIL filter for resizing images: bicubic, bilinear or lanczos (video frames come pre-resized)."""
    video: SlowFastConfig = field(default_factory=SlowFastConfig)
    """Slow-Fast planning for videos given without a plan."""

    def __post_init__(self) -> None:
        if not 1 <= self.image_min_tokens <= self.image_max_tokens:
            raise ValueError(
                f"need 1 <= image_min_tokens <= image_max_tokens, got {self.image_min_tokens}, {self.image_max_tokens}"
            )
        if self.patch_size < 1 or self.merge_size < 1:
            raise ValueError(f"patch_size and merge_size must be positive, got {self.patch_size}, {self.merge_size}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(
                f"image_mean and image_std need 3 values, std > 0; got {self.image_mean}, {self.image_std}"
            )
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")

    @property
    def token_side_px(self) -> int:
        """Pixels per side of one LLM token (28)."""
        return self.patch_size * self.merge_size

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProcessorConfig:
        """The inverse of ``dataclasses.asdict`` (JSON lists back to tuples, the video config rebuilt)."""
        names = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names and k != "video"}
        return cls(**values, video=SlowFastConfig(**data["video"]) if "video" in data else SlowFastConfig())

    @classmethod
    def load(cls, model_dir: str | Path) -> ProcessorConfig:
        """The config a checkpoint was trained with (its ``processor_config.json``); the defaults for a
        folder without one (checkpoints written before the file carried it)."""
        path = Path(model_dir) / PROCESSOR_FILE
        if not path.is_file():
            return cls()
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8"))["keye"])


def patchify(pixels_HWC: np.ndarray, patch_size: int) -> np.ndarray:
    """(H, W, C) -> (H/p * W/p, C*p*p): patches in raster order, each flattened as (C, p, p).

    Example, p = 14, a 28x42 image: grid 2x3; row 1 = pixels [0:14, 14:28], row 3 = [14:28, 0:14].
    """
    height, width, channels = pixels_HWC.shape
    assert height % patch_size == 0 and width % patch_size == 0, (height, width, patch_size)
    rows, cols = height // patch_size, width // patch_size
    grid = pixels_HWC.reshape(rows, patch_size, cols, patch_size, channels)
    return grid.transpose(0, 2, 4, 1, 3).reshape(rows * cols, channels * patch_size * patch_size)


@dataclass(kw_only=True)
class _Encoded:
    """One conversation, tokenized and expanded."""

    input_ids: list[int]
    labels: list[int]
    patches: list[np.ndarray]
    grids: list[tuple[int, int]]


class KeyeProcessor:
    """Conversations -> model tensors (module docstring); also the prompt builder and response decoder."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: ProcessorConfig | None = None) -> None:
        self.tokenizer = tokenizer
        self.config = config or ProcessorConfig()
        if tokenizer.pad_token_id is None:
            raise ValueError(
                f"tokenizer {tokenizer.name_or_path!r} has no pad token; load it with "
                "keye_model.tokenizer.load_tokenizer"
            )
        self.ids = {token: token_id(tokenizer, token) for token in st.ALL}
        self._mean = np.asarray(self.config.image_mean, dtype=np.float32)
        self._std = np.asarray(self.config.image_std, dtype=np.float32)

    # ----- public API --------------------------------------------------------------------------
    def __call__(
        self,
        conversations: Sequence[list[dict[str, Any]]],
        *,
        add_generation_prompt: bool = False,
        enable_thinking: bool | None = None,
        sample_ids: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encode a batch of conversations (a list of lists of messages) into padded tensors.

        ``sample_ids`` name the samples in error messages (default "sample <index>").
        """
        if not isinstance(conversations, Sequence) or not conversations or isinstance(conversations[0], dict):
            raise ValueError(
                "KeyeProcessor takes a non-empty batch: a list of conversations, each a list of "
                "messages (wrap a single conversation in a list)"
            )
        if sample_ids is not None and len(sample_ids) != len(conversations):
            raise ValueError(f"got {len(sample_ids)} sample_ids for {len(conversations)} conversations")
        names = list(sample_ids) if sample_ids is not None else [f"sample {i}" for i in range(len(conversations))]
        encoded = [
            self._encode(conv, name, add_generation_prompt, enable_thinking) for conv, name in zip(conversations, names)
        ]
        return self._collate(encoded)

    def build_prompt(
        self, conversation: list[dict[str, Any]], *, enable_thinking: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """Tensors for generating the next assistant turn of one conversation (batch of 1, no labels)."""
        batch = self([conversation], add_generation_prompt=True, enable_thinking=enable_thinking)
        del batch["labels"]
        return batch

    def build_prompts(
        self,
        conversations: Sequence[list[dict[str, Any]]],
        *,
        repeat: int = 1,
        sample_ids: Sequence[str] | None = None,
        enable_thinking: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """Tensors for generating the next assistant turn of several conversations at once: each one's
        ``build_prompt``, ``repeat`` rows of it, LEFT-padded, so every row's response starts in the same
        column (what batched ``generate`` needs; position ids count from each row's first real token).

        No labels. ValueError naming the sample (``sample_ids``, default "sample <index>") whose media
        cannot be read. Example: prompts of 3 and 5 tokens, repeat 2 -> (4, 5) ``input_ids`` whose rows 0
        and 1 start with 2 pads; ``pixel_values`` and ``grid_hw`` follow the rows.
        """
        if repeat < 1:
            raise ValueError(f"build_prompts needs repeat >= 1, got {repeat}")
        names = list(sample_ids) if sample_ids is not None else [f"sample {i}" for i in range(len(conversations))]
        prompts = []
        for conversation, name in zip(conversations, names, strict=True):
            try:
                prompts.append(self.build_prompt(conversation, enable_thinking=enable_thinking))
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from error
        rows = [p for p in prompts for _ in range(repeat)]
        width = max(int(p["input_ids"].shape[1]) for p in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, prompt in enumerate(rows):
            length = int(prompt["input_ids"].shape[1])
            input_ids[row, width - length :] = prompt["input_ids"][0]
            attention_mask[row, width - length :] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": torch.cat([p["pixel_values"] for p in rows]),
            "grid_hw": torch.cat([p["grid_hw"] for p in rows]).reshape(-1, 2),
        }

    def render(
        self,
        conversation: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = False,
        enable_thinking: bool | None = None,
    ) -> str:
        """The conversation as template text, one pad per image or video (for reading and debugging)."""
        messages = self._template_messages(conversation, "conversation")
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=CHAT_TEMPLATE,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **_thinking_kwargs(enable_thinking),
        )

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """Token ids -> text."""
        return self.tokenizer.decode(_as_list(ids), skip_special_tokens=skip_special_tokens)

    def decode_response(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Generated ids -> response text: cut at the first ``<|im_end|>`` / ``<|endoftext|>``; think tags kept.

        Pass only the new ids (``KeyeForConditionalGeneration.generate`` returns the prompt too: slice it off
        with ``[prompt_length:]``).
        """
        ids = _as_list(ids)
        stops = set(stop_token_ids(self.tokenizer))
        end = next((i for i, token in enumerate(ids) if token in stops), len(ids))
        return self.tokenizer.decode(ids[:end], skip_special_tokens=False).strip()

    def parse_response(self, ids: Sequence[int] | torch.Tensor) -> tuple[str | None, str]:
        """Generated ids -> (reasoning or None, answer); see keye_model.answers.split_thinking."""
        return split_thinking(self.decode_response(ids))

    def load_image(self, image: Any, where: str) -> tuple[np.ndarray, tuple[int, int]]:
        """One image -> (patches (h/14 * w/14, 588) float32, grid (h/14, w/14)) after fit_size resizing."""
        picture = _open_image(image, where)
        try:
            height, width = fit_size(
                picture.height,
                picture.width,
                self.config.image_min_tokens,
                self.config.image_max_tokens,
                factor=self.config.token_side_px,
            )
        except ValueError as error:  # e.g. an aspect ratio over 200
            raise ValueError(f"{where}: image {_describe(image)}: {error}") from error
        if (height, width) != (picture.height, picture.width):
            picture = picture.resize((width, height), resample=_RESAMPLE[self.config.resample])
        return self._pixels_to_patches(np.asarray(picture, dtype=np.uint8))

    # ----- encoding ----------------------------------------------------------------------------
    def _encode(
        self, conversation: list[dict[str, Any]], name: str, add_generation_prompt: bool, enable_thinking: bool | None
    ) -> _Encoded:
        messages = self._template_messages(conversation, name)
        rendered = self.tokenizer.apply_chat_template(
            messages,
            chat_template=CHAT_TEMPLATE,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            add_generation_prompt=add_generation_prompt,
            **_thinking_kwargs(enable_thinking),
        )
        ids, masks = list(rendered["input_ids"]), list(rendered["assistant_masks"])
        media = [
            (part, f"{name} message {m} part {p}")
            for m, message in enumerate(conversation)
            if not isinstance(message["content"], str)
            for p, part in enumerate(message["content"])
            if part["type"] in ("image", "video")
        ]
        pads = [token for token in ids if token in (self.ids[st.IMAGE_PAD], self.ids[st.VIDEO_PAD])]
        if len(pads) != len(media):
            raise ValueError(
                f"{name}: {len(media)} images/videos but {len(pads)} pad tokens after templating; "
                f"does a text part contain a literal {st.IMAGE_PAD} or {st.VIDEO_PAD}?"
            )
        out = _Encoded(input_ids=[], labels=[], patches=[], grids=[])
        media_iter = iter(media)
        for token, in_response in zip(ids, masks):
            if token == self.ids[st.IMAGE_PAD]:
                part, where = next(media_iter)
                patches, grid = self.load_image(part["image"], where)
                expansion = [token] * self._tokens_of(grid)
                out.patches.append(patches)
                out.grids.append(grid)
            elif token == self.ids[st.VIDEO_PAD]:
                part, where = next(media_iter)
                expansion = self._expand_video(part, where, out)
            else:
                out.input_ids.append(token)
                out.labels.append(token if in_response else IGNORE_INDEX)
                continue
            out.input_ids += expansion
            out.labels += [IGNORE_INDEX] * len(expansion)
        return out

    def _expand_video(self, part: dict[str, Any], where: str, out: _Encoded) -> list[int]:
        """Frame markers, timestamps and pads of one video; appends its frames' patches and grids to out."""
        path = part["video"]
        plan, frames = part.get("plan"), part.get("frames")
        if isinstance(plan, dict):  # a plan stored as JSON next to a sample
            plan = VideoPlan.from_dict(plan)
        try:
            if plan is None:
                if frames is not None:
                    raise ValueError("pre-decoded 'frames' need the 'plan' they were decoded by")
                plan, frames = plan_and_load_video(path, self.config.video)  # one decode for both
            elif frames is None:
                frames = load_planned_frames(path, plan)
        except (OSError, ValueError) as error:  # keye_model.video.VideoDecodeError is a ValueError
            raise ValueError(f"{where}: video {path}: {error}") from error
        if not plan.frames:
            raise ValueError(f"{where}: the plan of video {path} has no frames")
        if len(frames) != len(plan.frames):
            raise ValueError(f"{where}: video {path} gave {len(frames)} frames for {len(plan.frames)} planned")
        expansion: list[int] = []
        for frame, pixels in zip(plan.frames, frames):
            label = f"{where} video {path} frame {frame.index}"
            if np.shape(pixels) != (frame.height, frame.width, 3):
                raise ValueError(
                    f"{label}: pixels of shape {np.shape(pixels)}, planned ({frame.height}, {frame.width}, 3)"
                )
            if frame.height % self.config.token_side_px or frame.width % self.config.token_side_px:
                raise ValueError(
                    f"{label}: planned size {frame.height}x{frame.width} is not a multiple of "
                    f"{self.config.token_side_px}"
                )
            if frame.kind not in ("slow", "fast"):
                raise ValueError(f"{label}: kind must be 'slow' or 'fast', got {frame.kind!r}")
            patches, grid = self._pixels_to_patches(np.asarray(pixels, dtype=np.uint8))
            if self._tokens_of(grid) != frame.tokens:
                raise ValueError(
                    f"{label}: planned {frame.tokens} tokens but {frame.height}x{frame.width} "
                    f"makes {self._tokens_of(grid)}"
                )
            out.patches.append(patches)
            out.grids.append(grid)
            pads = [self.ids[st.VIDEO_PAD]] * frame.tokens
            if frame.kind == "fast":
                pads = [self.ids[st.FAST_START], *pads, self.ids[st.FAST_END]]
            timestamp = self.tokenizer.encode(f"{frame.time:.1f}", add_special_tokens=False)
            expansion += [self.ids[st.FRAME], *timestamp, *pads]
        return expansion

    def _pixels_to_patches(self, pixels_HWC: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """uint8 (h, w, 3) with sides multiples of 28 -> normalized patches and the (h/14, w/14) grid."""
        side = self.config.token_side_px
        height, width = pixels_HWC.shape[:2]
        num_tokens(height, width, side)  # asserts the sides are multiples of the token side
        normalized = (pixels_HWC.astype(np.float32) / 255.0 - self._mean) / self._std
        patch = self.config.patch_size
        return patchify(normalized, patch), (height // patch, width // patch)

    def _tokens_of(self, grid: tuple[int, int]) -> int:
        return (grid[0] // self.config.merge_size) * (grid[1] // self.config.merge_size)

    def _template_messages(self, conversation: Any, name: str) -> list[dict[str, Any]]:
        """Validate a conversation; return it with media parts reduced to their type for the template."""
        if not isinstance(conversation, list) or not conversation:
            raise ValueError(f"{name}: a conversation must be a non-empty list of messages")
        messages = []
        for m, message in enumerate(conversation):
            where = f"{name} message {m}"
            if not isinstance(message, dict) or message.get("role") not in _ROLES or "content" not in message:
                raise ValueError(f"{where}: need a dict with role in {_ROLES} and a content, got {message!r:.200}")
            content = message["content"]
            if not isinstance(content, str):
                if not isinstance(content, list):
                    raise ValueError(f"{where}: content must be a string or a list of parts")
                content = [
                    self._template_part(part, f"{where} part {p}", message["role"]) for p, part in enumerate(content)
                ]
            kept = {key: value for key, value in message.items() if key != "content"}
            messages.append({**kept, "content": content})
        return messages

    @staticmethod
    def _template_part(part: Any, where: str, role: str) -> dict[str, str]:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ValueError(f"{where}: a text part needs a string 'text'")
            return {"type": "text", "text": part["text"]}
        if kind not in ("image", "video"):
            raise ValueError(f"{where}: part type must be text, image or video, got {part!r:.200}")
        if role == "assistant":
            raise ValueError(f"{where}: {kind} parts are allowed in system and user messages only")
        if part.get(kind) is None:
            raise ValueError(f"{where}: an {kind} part needs an '{kind}' entry")
        return {"type": kind}

    def _collate(self, encoded: list[_Encoded]) -> dict[str, torch.Tensor]:
        """Right-pad the samples and stack; concatenate all patches and grids in placeholder order."""
        length = max(len(sample.input_ids) for sample in encoded)
        input_ids = torch.full((len(encoded), length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
        labels = torch.full((len(encoded), length), IGNORE_INDEX, dtype=torch.long)
        for row, sample in enumerate(encoded):
            n = len(sample.input_ids)
            input_ids[row, :n] = torch.tensor(sample.input_ids, dtype=torch.long)
            attention_mask[row, :n] = 1
            labels[row, :n] = torch.tensor(sample.labels, dtype=torch.long)
        patches = [p for sample in encoded for p in sample.patches]
        patch_dim = 3 * self.config.patch_size**2
        pixel_values = (
            torch.from_numpy(np.concatenate(patches)) if patches else torch.zeros((0, patch_dim), dtype=torch.float32)
        )
        grids = [g for sample in encoded for g in sample.grids]
        grid_hw = torch.tensor(grids, dtype=torch.long).reshape(len(grids), 2)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "pixel_values": pixel_values,
            "grid_hw": grid_hw,
        }


def _open_image(image: Any, where: str) -> Image.Image:
    """A path, PIL image or uint8 array (H, W) / (H, W, 3|4) -> RGB PIL image; ValueError naming the input."""
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as opened:
                return opened.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise ValueError(f"{where}: cannot read image {image}: {error}") from error
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise ValueError(
                f"{where}: an image array must be uint8 (H, W) or (H, W, 3|4), got {image.dtype} {image.shape}"
            )
        return Image.fromarray(image).convert("RGB")
    raise ValueError(f"{where}: an image must be a path, a PIL image or a uint8 array, got {type(image).__name__}")


def _describe(image: Any) -> str:
    return str(image) if isinstance(image, (str, Path)) else f"({type(image).__name__})"


def _thinking_kwargs(enable_thinking: bool | None) -> dict[str, bool]:
    return {} if enable_thinking is None else {"enable_thinking": enable_thinking}


def _as_list(ids: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"expected a 1-D sequence of ids, got shape {tuple(ids.shape)}")
        return ids.tolist()
    return list(ids)
