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
    """Most records a packaged source returns (a user's folder is bounded by ``folder_limit`` instead)."""
    folder_limit: int | None = None
    """Most records read from ``root`` (a user's folder); None reads it whole. Items a limit leaves out
    are counted in ``Collected.num_dropped`` and logged, never dropped silently."""
    seed: int = 0
    """Seeds which items are picked and how they are rendered; same seed, same records."""
    root: str | None = None
    """Input folder, for sources that read the user's files (``local-folder``); None otherwise."""
    max_side_px: int = 256
    """Longest side of images and video frames a source renders itself (keeps test data small)."""

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"source {self.name!r}: limit must be >= 1, got {self.limit}")
        if self.folder_limit is not None and self.folder_limit < 1:
            raise ValueError(f"source {self.name!r}: folder_limit must be >= 1 or None, got {self.folder_limit}")
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
    """The input text as read (truncated to a few KB; bytes that are not UTF-8 shown as ``\\xNN``)."""
    kind: str = "not a valid record"
    """Short phrase the validation report counts it under (``line is not UTF-8``, ``media outside the
    folder``...); ``reason`` has the specifics."""


@dataclass(frozen=True, kw_only=True)
class Collected:
    """What one source returned."""

    records: list[Record]
    """Records made, in a deterministic order."""
    rejected: list[Rejected] = field(default_factory=list)
    """Inputs that could not become records; ``tasks.validate`` quarantines them with their reason."""
    num_dropped: int = 0
    """Items the source had but left unread because of a limit (logged; 0 when it read everything)."""
