"""LongCoT step 4: people refine every B sample and the borderline A samples (SPEC.md section 4).

``request_review`` shows the borderline samples to a person as one Prefect form and returns their
``ReviewDecision``s (which lineage records); ``apply_decisions`` applies them.

Modes:
- ``ui``: ``pause_flow_run(wait_for_input=ReviewForm...)``. The flow process stays alive and polls, so
  this suits short reviews (minutes, the tiny preset, a person at the screen). On timeout it falls back
  to the auto policy with reviewer ``auto-timeout`` rather than failing a long curation run.
- ``suspend``: ``suspend_flow_run(wait_for_input=...)``. The process exits and the flow re-runs from the
  top on resume (persisted task results come back cached) -- the right choice for reviews that take
  hours; it needs a deployment run and cache-friendly upstream tasks (LongCoT's tasks are).
- ``auto``: the stated ``ReviewPolicy``; decisions carry reviewer ``auto`` and the rule in ``comment``.

What the UI can show: the form's description and each field's description are markdown (raw HTML such as
``<think>`` is dropped, so it goes in code spans), a string field is a one-row text box in a 32rem modal
and the schema sets neither its size nor the modal's. So the sample itself is in the description: its
image inlined as a small PNG data URI (the browser cannot load a path on the flow's machine) and its
response as wrapped text; the pre-filled ``edited_response`` boxes are for editing only. The dialog
squeezes that description to nothing once the rows are taller than it (two samples are), so the same
markdown is also a markdown artifact of the paused run (its Artifacts tab).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from prefect.input import RunInput
from pydantic import BaseModel, Field

from data_specs.longcot import CoTSample, QualityTier, ReviewDecision, ReviewPolicy
from data_specs.schemas import IMAGE_SUFFIXES
from tasks.longcot import split_response

log = logging.getLogger(__name__)

REVIEW_MODES = ("ui", "suspend", "auto")
#: Longest side of the image thumbnail inlined in the form (a few KB of base64 per sample).
THUMBNAIL_SIDE_PX = 192


def thumbnail_data_uri(path: str, side_px: int = THUMBNAIL_SIDE_PX) -> str:
    """``data:image/png;base64,...`` of the image at ``path`` shrunk to at most ``side_px`` a side."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((side_px, side_px))
        buf = io.BytesIO()
        image.save(buf, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def markdown_text(text: str) -> str:
    """``text`` shown as written in markdown: ``<``, ``>``, ``&`` as entities (the UI drops raw HTML such
    as ``<think>``), each line kept (a hard break), ``*_`[]#\\`` escaped."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for char in "\\`*_[]#":
        escaped = escaped.replace(char, "\\" + char)
    return "  \n".join(escaped.splitlines())


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReviewItem:
    """What a person sees of one sample."""

    sample_id: str
    """The sample under review."""
    tier: str
    """A or B."""
    question: str
    """The (enhanced) question."""
    reference: str | None
    """The reference answer, if any."""
    image_path: str | None
    """The image to look at (a local path, also shown in the form)."""
    response: str
    """The full ``<think>...</think> answer`` response."""
    reasons: tuple[str, ...]
    """Why it was tiered so (rule failures, judge scores)."""
    agreement: float
    """Fraction of the problem's paths that agree with its answer."""

    @classmethod
    def from_sample(cls, sample: CoTSample) -> ReviewItem:
        return cls(
            sample_id=sample.id,
            tier=sample.tier.value,
            question=sample.problem.question,
            reference=sample.problem.reference,
            image_path=sample.problem.media_path,
            response=sample.path.text,
            reasons=sample.reasons,
            agreement=sample.path.agreement,
        )

    def image_markdown(self) -> str:
        """The image inlined as a thumbnail (a data URI the browser shows offline), with its path."""
        if not self.image_path:
            return "(no image)"
        where = f"image: `{self.image_path}`"
        if Path(self.image_path).suffix.lower() not in IMAGE_SUFFIXES:
            return where  # a video: the path only
        try:
            return f"![image]({thumbnail_data_uri(self.image_path)})\n\n{where}"
        except OSError as exc:  # missing or unreadable: say so in the form rather than fail the review
            return f"{where} (cannot be shown: {exc})"

    def to_markdown(self) -> str:
        reasons = "".join(f"\n- {markdown_text(r)}" for r in self.reasons) or "\n- (none)"
        return (
            f"### {self.sample_id} (tier {self.tier}, path agreement {self.agreement:.2f})\n\n"
            f"{self.image_markdown()}\n\n"
            f"**Question:** {self.question}\n\n**Reference:** {self.reference or '(none)'}\n\n"
            f"**Response:**\n\n{markdown_text(self.response)}\n\n**Why:**{reasons}\n"
        )


class SampleReview(BaseModel):
    """One row of the form; pre-filled with ``approve`` and the response, so a person edits in place."""

    sample_id: str
    decision: Literal["approve", "edit", "reject"] = "approve"
    edited_response: str = Field(
        default="", description="For `edit`: the corrected full response, `<think>reasoning</think> answer`."
    )
    comment: str = ""


class ReviewForm(RunInput):
    """The Prefect form: the reviewer's name and one row per sample."""

    reviewer: str = Field(
        min_length=1, pattern=r"\S", description="Your name (required); recorded in lineage with each decision."
    )
    reviews: list[SampleReview]


def select_for_review(samples: Sequence[CoTSample]) -> list[ReviewItem]:
    """Every B and the borderline A samples (step 3 sets ``borderline``)."""
    return [ReviewItem.from_sample(s) for s in samples if s.borderline or s.tier is QualityTier.B]


def auto_decisions(
    items: Sequence[ReviewItem], policy: ReviewPolicy, samples: Sequence[CoTSample], *, reviewer: str = "auto"
) -> list[ReviewDecision]:
    """The stated policy: approve borderline A when ``policy.approve_a``; approve B only with path
    agreement >= ``min_agreement_b`` and judge mean >= ``min_judge_mean_b``; reject the rest."""
    by_id = {s.id: s for s in samples}
    decisions = []
    for item in items:
        sample = by_id[item.sample_id]
        if sample.tier is QualityTier.A:
            ok, rule = policy.approve_a, f"tier A, approve_a={policy.approve_a}"
        else:
            mean = sample.verdict.mean
            ok = (
                sample.path.agreement >= policy.min_agreement_b and mean is not None and mean >= policy.min_judge_mean_b
            )
            rule = (
                f"tier B: agreement {sample.path.agreement:.2f} (need >= {policy.min_agreement_b}), "
                f"judge mean {mean if mean is None else round(mean, 2)} (need >= {policy.min_judge_mean_b})"
            )
        decisions.append(
            ReviewDecision(
                sample_id=item.sample_id,
                decision="approve" if ok else "reject",
                reviewer=reviewer,
                comment=f"policy: {rule}",
            )
        )
    return decisions


def review_markdown(items: Sequence[ReviewItem]) -> str:
    """The samples to review, each with its image inlined, under a header saying what to do."""
    header = (
        f"## LongCoT review: {len(items)} sample(s)\n\nFor each row choose approve, edit (put the "
        "corrected full response in edited_response) or reject.\n\n"
    )
    return header + "\n---\n".join(i.to_markdown() for i in items)


def build_form(items: Sequence[ReviewItem]) -> type[ReviewForm]:
    """The form class with the samples as markdown in its description and one pre-filled row each."""
    return ReviewForm.with_initial_data(  # no initial reviewer: the form requires one
        description=review_markdown(items),
        reviews=[SampleReview(sample_id=i.sample_id, edited_response=i.response) for i in items],
    )


def decisions_from_form(form: ReviewForm, items: Sequence[ReviewItem]) -> list[ReviewDecision]:
    """Validate the submitted form against the items: every sample answered once, edits non-empty."""
    expected = {i.sample_id for i in items}
    answered = [r.sample_id for r in form.reviews]
    unknown, missing = sorted(set(answered) - expected), sorted(expected - set(answered))
    if unknown or missing or len(answered) != len(set(answered)):
        raise ValueError(
            f"review form does not match the samples: unknown {unknown}, missing {missing}, answered {answered}"
        )
    reviewer = form.reviewer.strip()
    if not reviewer:  # the form requires a name; a hand-built one may not
        raise ValueError("review form without a reviewer name; lineage records who decided")
    return [
        ReviewDecision(
            sample_id=r.sample_id,
            decision=r.decision,
            reviewer=reviewer,
            comment=r.comment,
            edited_response=r.edited_response if r.decision == "edit" else None,
        )
        for r in form.reviews
    ]


def request_review(
    samples: Sequence[CoTSample],
    *,
    mode: str = "auto",
    timeout_s: int = 3600,
    policy: ReviewPolicy = ReviewPolicy(),
    poll_interval_s: int = 10,
) -> list[ReviewDecision]:
    """Decisions for the samples that need review (see module docstring for the modes). Modes ``ui``
    and ``suspend`` must be called from inside a flow run (not a task)."""
    if mode not in REVIEW_MODES:
        raise ValueError(f"review mode {mode!r} not in {REVIEW_MODES}")
    items = select_for_review(samples)
    if not items:
        return []
    if mode == "auto":
        return auto_decisions(items, policy, samples)
    from prefect.artifacts import create_markdown_artifact
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run, suspend_flow_run

    form = build_form(items)
    # The UI's Resume dialog squeezes a long description to nothing once the form's rows fill it: the
    # samples are also on the paused run's Artifacts tab, full size.
    create_markdown_artifact(markdown=review_markdown(items), description="LongCoT samples waiting for review")
    log.info("waiting up to %d s for a person to review %d sample(s)", timeout_s, len(items))
    try:
        if mode == "ui":
            answer = pause_flow_run(wait_for_input=form, timeout=timeout_s, poll_interval=poll_interval_s)
        else:
            answer = suspend_flow_run(wait_for_input=form, timeout=timeout_s)
    except FlowPauseTimeout:
        log.warning("no review within %d s; applying the auto policy to %d sample(s)", timeout_s, len(items))
        return auto_decisions(items, policy, samples, reviewer="auto-timeout")
    return decisions_from_form(answer, items)


def apply_decisions(
    samples: Sequence[CoTSample], decisions: Sequence[ReviewDecision]
) -> tuple[list[CoTSample], list[CoTSample]]:
    """``(kept, rejected)``: approve keeps the sample, edit replaces its response and promotes it to A
    (a person fixed the reasoning), reject moves it to the rejects. Unreviewed samples are kept as is."""
    by_id = {d.sample_id: d for d in decisions}
    unknown = sorted(set(by_id) - {s.id for s in samples})
    if unknown:
        raise ValueError(f"review decisions for unknown samples: {unknown}")
    kept, rejected = [], []
    for sample in samples:
        d = by_id.get(sample.id)
        if d is None:
            kept.append(sample)
            continue
        note = f"review: {d.decision} by {d.reviewer}" + (f" ({d.comment})" if d.comment else "")
        if d.decision == "reject":
            rejected.append(dataclasses.replace(sample, review="reject", reasons=(*sample.reasons, note)))
        elif d.decision == "approve":
            kept.append(dataclasses.replace(sample, review="approve", reasons=(*sample.reasons, note)))
        else:
            thinking, answer = split_response(d.edited_response)
            if not thinking or not answer:
                raise ValueError(
                    f"review edit of {sample.id} is not '<think>reasoning</think> answer': {d.edited_response[:80]!r}"
                )
            path = dataclasses.replace(sample.path, text=d.edited_response, thinking=thinking, answer=answer)
            kept.append(
                dataclasses.replace(
                    sample, path=path, tier=QualityTier.A, review="edit", reasons=(*sample.reasons, note)
                )
            )
    return kept, rejected
