"""Record schemas: what one curated sample is, before it becomes a CoT sample, a pair or a shard entry.

Declarative and validated in ``__post_init__`` so that a malformed record fails where it is made, with
its id in the message. Great Expectations suites (``expectations.py``) check whole batches of these.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

MODALITIES = ("image", "video", "text")
#: File suffixes read as media, by modality (lower case).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi"})
TASK_TYPES = (
    "caption",
    "ocr",
    "vqa",
    "grounding",
    "counting",
    "temporal_localization",
    "reasoning",
    "instruction",
)
#: Record ids become WebDataset keys: a key is split at its first dot, so no dots, no slashes.
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,127}$")


@dataclass(frozen=True, kw_only=True)
class Record:
    """One raw sample from a source."""

    id: str
    """Stable id, unique across sources (``<source>-<local id>``); WebDataset-safe."""
    source: str
    """Name of the source adapter that made it (``easy-vqa``, ``skimage``, ...)."""
    modality: str
    """``image``, ``video`` or ``text``."""
    task: str
    """One of TASK_TYPES."""
    question: str
    """The user turn (may be empty for plain captioning pre-training data)."""
    answer: str
    """The reference answer or caption."""
    media_path: str | None = None
    """Image or video file for image/video records; None for text."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Source-specific extras (event times, boxes, options...), JSON-serializable."""

    def __post_init__(self) -> None:
        if not ID_PATTERN.match(self.id):
            raise ValueError(f"record id {self.id!r} must match {ID_PATTERN.pattern}")
        if self.modality not in MODALITIES:
            raise ValueError(f"record {self.id}: modality {self.modality!r} not in {MODALITIES}")
        if self.task not in TASK_TYPES:
            raise ValueError(f"record {self.id}: task {self.task!r} not in {TASK_TYPES}")
        if (self.modality == "text") != (self.media_path is None):
            raise ValueError(f"record {self.id}: {self.modality} record with media_path={self.media_path!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Record:
        return cls(**json.loads(text))
