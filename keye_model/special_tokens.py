"""The special tokens of the Keye prompt format (SPEC.md section 1), as strings.

Token ids are never written down here: they depend on the tokenizer, so code looks them up with
``tokenizer.convert_tokens_to_ids`` (a literal id would force a 152k vocabulary into the tiny model).
"""

from __future__ import annotations

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
FRAME = "<|frame|>"
FAST_START = "<|fast_start|>"
FAST_END = "<|fast_end|>"
THINK_START = "<think>"
THINK_END = "</think>"
BOX_START = "<|box_start|>"
BOX_END = "<|box_end|>"
CLIP_TIME_START = "<|clip_time_start|>"
CLIP_TIME_END = "<|clip_time_end|>"

ALL = (
    END_OF_TEXT,
    IM_START,
    IM_END,
    VISION_START,
    VISION_END,
    IMAGE_PAD,
    VIDEO_PAD,
    FRAME,
    FAST_START,
    FAST_END,
    THINK_START,
    THINK_END,
    BOX_START,
    BOX_END,
    CLIP_TIME_START,
    CLIP_TIME_END,
)
