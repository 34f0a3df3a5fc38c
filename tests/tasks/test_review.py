"""Step 4 review: the auto policy, applying decisions, and a real pause/resume under the Prefect harness."""

from __future__ import annotations

import dataclasses
import re
import threading
import time

import easy_vqa
import pytest

from data_specs.longcot import CoTProblem, CoTSample, LongCoTConfig, QualityTier, ReviewDecision, ReviewPolicy
from tasks.generation import Generation, RuleJudge
from tasks.longcot import assess_quality, paths_from_generations
from tasks.review import (
    ReviewForm,
    SampleReview,
    apply_decisions,
    auto_decisions,
    build_form,
    decisions_from_form,
    request_review,
    select_for_review,
)

CONFIG = LongCoTConfig(enhance=False, max_kept_paths_per_problem=5)


def _assessed(index: int, texts: list[str]) -> list[CoTSample]:
    questions, answers, image_ids = easy_vqa.get_train_questions()
    problem = CoTProblem(
        id=f"easy-vqa-{index}",
        record_id=f"easy-vqa-{index}",
        source="easy-vqa",
        task="vqa",
        category="vqa",
        question=questions[index],
        reference=answers[index],
        media_path=easy_vqa.get_train_image_paths()[image_ids[index]],
    )
    gens = [Generation(text=t.format(ref=answers[index]), token_logprobs=[-0.3], finish_reason="stop") for t in texts]
    kept, _ = assess_quality([problem], paths_from_generations(problem, gens), RuleJudge(), CONFIG)
    return kept


@pytest.fixture(scope="module")
def samples() -> list[CoTSample]:
    # easy-vqa 0: "what is the blue shape?" -> rectangle; 1: "what color is the shape?" -> blue
    good = "<think>I find the blue shape.\nIt has four right angles.\nIt is a {ref}.</think>{ref}"
    one_step = "<think>The blue shape is a {ref}.</think>{ref}"
    wrong = "<think>I find the blue shape.\nIt looks round.\nIt is a circle.</think>circle"
    # 0: A with low agreement (borderline) and a lone B; 1: a B whose paths all agree, and a clear A.
    first = _assessed(0, [good, one_step, wrong, wrong, wrong])
    second = _assessed(
        1,
        [
            "<think>I check the color of the shape.\nThe shape is filled.\nIts color is {ref}.</think>{ref}",
            "<think>The shape color is {ref}.</think>{ref}",
            "<think>The color of the shape is {ref}.</think> {ref}",
        ],
    )
    return first + second


def test_selection_and_auto_policy(samples):
    assert [(s.tier, s.borderline) for s in samples] == [
        (QualityTier.A, True),
        (QualityTier.B, True),
        (QualityTier.A, False),
        (QualityTier.B, True),
        (QualityTier.B, True),
    ]
    items = select_for_review(samples)
    assert [i.sample_id for i in items] == ["easy-vqa-0-p0", "easy-vqa-0-p1", "easy-vqa-1-p1", "easy-vqa-1-p2"]
    decisions = auto_decisions(items, ReviewPolicy(min_agreement_b=0.6, min_judge_mean_b=3.0), samples)
    assert [d.decision for d in decisions] == ["approve", "reject", "approve", "approve"]
    assert all(d.reviewer == "auto" and d.comment.startswith("policy: ") for d in decisions)
    assert "agreement 0.40 (need >= 0.6)" in decisions[1].comment
    strict = auto_decisions(items, ReviewPolicy(approve_a=False, min_judge_mean_b=4.5), samples)
    assert [d.decision for d in strict] == ["reject"] * 4
    assert request_review(samples, mode="auto") == decisions
    with pytest.raises(ValueError, match="review mode 'web'"):
        request_review(samples, mode="web")


def test_apply_decisions(samples):
    fixed = "<think>I find the blue shape.\nIt has four sides.\nIt is a rectangle.</think>rectangle"
    decisions = [
        ReviewDecision(sample_id="easy-vqa-0-p0", decision="approve", reviewer="ana"),
        ReviewDecision(
            sample_id="easy-vqa-0-p1", decision="edit", reviewer="ana", edited_response=fixed, comment="added steps"
        ),
        ReviewDecision(sample_id="easy-vqa-1-p1", decision="reject", reviewer="ana"),
    ]
    kept, rejected = apply_decisions(samples, decisions)
    by_id = {s.id: s for s in kept}
    assert [s.id for s in rejected] == ["easy-vqa-1-p1"] and rejected[0].review == "reject"
    edited = by_id["easy-vqa-0-p1"]
    assert edited.path.text == fixed and edited.path.answer == "rectangle" and edited.path.thinking.count("\n") == 2
    assert (
        edited.tier is QualityTier.A
        and edited.review == "edit"
        and "review: edit by ana (added steps)" in edited.reasons
    )
    assert by_id["easy-vqa-0-p0"].review == "approve" and by_id["easy-vqa-1-p2"].review is None  # unreviewed: as is
    bad = dataclasses.replace(decisions[1], edited_response="just rectangle")
    with pytest.raises(ValueError, match="review edit of easy-vqa-0-p1"):
        apply_decisions(samples, [bad])
    with pytest.raises(ValueError, match="unknown samples: \\['nope'\\]"):
        apply_decisions(samples, [dataclasses.replace(decisions[0], sample_id="nope")])
    with pytest.raises(ValueError, match="'edit' needs a non-empty edited_response"):
        ReviewDecision(sample_id="x", decision="edit", reviewer="ana")


def test_form_shows_samples_and_validates_answers(samples):
    items = select_for_review(samples)
    form = build_form(items)
    description = form._description  # what RunInput.save stores for the UI
    for item in items:
        assert f"### {item.sample_id} (tier {item.tier}" in description
        assert item.image_path in description and item.question in description
    prefilled = form.model_fields["reviews"].default
    assert [(r.sample_id, r.decision) for r in prefilled] == [(i.sample_id, "approve") for i in items]
    assert prefilled[1].edited_response == items[1].response  # a person edits in place
    answer = ReviewForm(reviewer="ana", reviews=[SampleReview(sample_id=i.sample_id) for i in items])
    assert [d.decision for d in decisions_from_form(answer, items)] == ["approve"] * 4
    with pytest.raises(ValueError, match="missing \\['easy-vqa-1-p2'\\]"):
        decisions_from_form(ReviewForm(reviewer="ana", reviews=answer.reviews[:3]), items)


def test_form_schema_requires_a_reviewer_and_inlines_the_image(samples):
    """What the UI gets (the schema and description RunInput.save stores): a required, non-blank
    reviewer; each sample's image as a PNG data URI the browser shows offline; ``<think>`` kept visible
    (the UI's markdown drops raw HTML tags)."""
    import base64
    import io

    import jsonschema
    from PIL import Image
    from prefect._internal.pydantic.v2_schema import create_v2_schema

    items = select_for_review(samples)
    form = build_form(items)
    schema = create_v2_schema(form.__name__, model_base=form)
    assert "reviewer" in schema["required"] and "default" not in schema["properties"]["reviewer"]
    rows = [{"sample_id": i.sample_id, "decision": "approve", "edited_response": "", "comment": ""} for i in items]
    jsonschema.validate({"reviewer": "ana", "reviews": rows}, schema)
    for blank in ({"reviews": rows}, {"reviewer": "", "reviews": rows}, {"reviewer": "   ", "reviews": rows}):
        with pytest.raises(jsonschema.ValidationError):  # the server refuses these, so does the UI's form
            jsonschema.validate(blank, schema)
    with pytest.raises(ValueError):
        ReviewForm(reviewer="", reviews=[])
    description = form._description
    uris = re.findall(r"!\[image\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", description)
    assert len(uris) == len(items)  # every sample's image inline, not a path the browser cannot load
    with Image.open(io.BytesIO(base64.b64decode(uris[0]))) as thumbnail:
        assert thumbnail.format == "PNG" and max(thumbnail.size) <= 192
    assert "](/" not in description and "](file:" not in description
    assert "<think>" not in description and "&lt;think&gt;" in description  # shown, not parsed as a tag
    help_text = schema["definitions"]["SampleReview"]["properties"]["edited_response"]["description"]
    assert "`<think>reasoning</think> answer`" in help_text  # a code span: the UI shows it as written


# ---- the real pause / resume ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _resume_as_a_person(found: dict, decisions: dict[str, str], fixed: str) -> None:
    """Find the paused run through the API, read its form, resume it with the person's answers."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    deadline = time.monotonic() + 90
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            paused = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                )
            )
            if paused:
                run = paused[0]
                keyset = run.state.state_details.run_input_keyset
                found["description"] = client.read_flow_run_input(run.id, keyset["description"])
                found["artifacts"] = [
                    a.data
                    for a in client.read_artifacts(
                        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
                    )
                ]
                break
            time.sleep(0.5)
        else:
            found["error"] = "no paused flow run within 90 s"
            return
    reviews = [
        {"sample_id": sid, "decision": d, "edited_response": fixed if d == "edit" else "", "comment": ""}
        for sid, d in decisions.items()
    ]
    try:
        resume_flow_run(
            run.id, run_input={"reviewer": "ana", "reviews": [{**reviews[0], "decision": "maybe"}] + reviews[1:]}
        )
    except RuntimeError as exc:  # input that does not match the form is refused; the run stays paused
        found["refused"] = str(exc)
    resume_flow_run(run.id, run_input={"reviewer": "ana", "reviews": reviews})


@pytest.mark.slow
def test_ui_review_pauses_and_returns_the_persons_decisions(samples, prefect_harness):
    from prefect import flow

    @flow(name="review-test")
    def review_flow(samples_json: list[str]) -> list[str]:
        decisions = request_review(
            [CoTSample.from_json(t) for t in samples_json], mode="ui", timeout_s=120, poll_interval_s=1
        )
        return [d.to_json() for d in decisions]

    fixed = "<think>I find the blue shape.\nIt has four sides.\nIt is a rectangle.</think>rectangle"
    wanted = {
        "easy-vqa-0-p0": "approve",
        "easy-vqa-0-p1": "edit",
        "easy-vqa-1-p1": "reject",
        "easy-vqa-1-p2": "approve",
    }
    found: dict = {}
    person = threading.Thread(target=_resume_as_a_person, args=(found, wanted, fixed), daemon=True)
    person.start()
    result = [ReviewDecision.from_json(t) for t in review_flow([s.to_json() for s in samples])]
    person.join(timeout=30)
    assert "error" not in found, found["error"]
    assert "easy-vqa-0-p0" in found["description"] and ".png" in found["description"]  # what the person saw
    # ... and, full size, on the paused run's Artifacts tab (the dialog squeezes a long description)
    assert any("easy-vqa-0-p0" in str(data) and "data:image/png;base64," in str(data) for data in found["artifacts"])
    assert "refused" in found
    assert {d.sample_id: d.decision for d in result} == wanted
    assert all(d.reviewer == "ana" for d in result)
    assert next(d for d in result if d.decision == "edit").edited_response == fixed
