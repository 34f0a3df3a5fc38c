"""What a source is asked for (``SourceSpec``) and what it hands back (``Collected``).

Every source module exposes ``NAME`` (its registry name, also each record's ``source``) and
``collect(spec, work_dir) -> Collected``. ``work_dir`` is where a source may write files it makes (photos
saved from arrays, rendered videos); packaged files that already exist are referenced where they lie.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_specs.schemas import Record


@dataclass(frozen=True, kw_only=True)
class SourceSpec:
    """One source to collect from; plain JSON types so that it can be a flow parameter."""

    name: str
    """Registry name (``easy-vqa``, ``skimage``, ``scene-videos``, ``local-folder``, ``text-instructions``)."""
    limit: int = 16
    """Most records to return."""
    seed: int = 0
    """Seeds which items are picked and how they are rendered; same seed, same records."""
    root: str | None = None
    """Input folder, for sources that read the user's files (``local-folder``); None otherwise."""
    max_side_px: int = 256
    """Longest side of images and video frames a source renders itself (keeps test data small)."""

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"source {self.name!r}: limit must be >= 1, got {self.limit}")
        if self.max_side_px < 28:
            raise ValueError(f"source {self.name!r}: max_side_px must be >= 28, got {self.max_side_px}")


@dataclass(frozen=True, kw_only=True)
class Rejected:
    """An input that could not even become a Record (e.g. a malformed JSONL line); quarantined, not lost."""

    source: str
    """Source that met it."""
    where: str
    """File, and line for JSONL, of the input."""
    reason: str
    """Why it was rejected, naming the failing field."""
    raw: str
    """The input text as read (truncated to a few KB)."""


@dataclass(frozen=True, kw_only=True)
class Collected:
    """What one source returned."""

    records: list[Record]
    """Records made, in a deterministic order."""
    rejected: list[Rejected] = field(default_factory=list)
    """Inputs that could not become records; ``tasks.validate`` quarantines them with their reason."""
