"""Alignment prompts: think switches and checkable instructions on curated records, and the rule rewards
firing on them (1 for a compliant answer, 0 for a violating one, for every constraint kind drawn)."""

from __future__ import annotations

import json
import random

import pytest

from data_specs.schemas import Record
from keye_model.answers import judge_answer, split_thinking
from keye_model.chat import NO_THINK_SUFFIX, THINK_SUFFIX
from keye_model.rewards import Constraint, RewardFunction, RewardSample, check_constraints, rule_reward
from keye_model.training.examples import Example, rl_prompt
from tasks import alignment_prompts as ap
from tasks.sources import SourceSpec, easy_vqa, text_instructions

ALL_BUILDERS = {**ap.SHORT_BUILDERS, **ap.FREE_FORM_BUILDERS}


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> list[Record]:
    """Real curated records: easy-vqa train questions (with reasoning records) and text instructions."""
    work = tmp_path_factory.mktemp("sources")
    vqa = easy_vqa.collect(SourceSpec(name="easy-vqa", limit=60, seed=0), work).records
    text = text_instructions.collect(SourceSpec(name="text-instructions", limit=40, seed=0), work).records
    return vqa + text


def test_prompts_carry_a_switch_instructions_and_constraints(curated):
    prompts = ap.alignment_records(curated, seed=3)
    assert [p.id for p in prompts] == [r.id for r in curated]
    for record, prompt in zip(curated, prompts):
        constraints = ap.constraints_of(prompt)
        assert ap.MIN_INSTRUCTIONS <= len(constraints) <= ap.MAX_INSTRUCTIONS
        assert len({c.kind for c in constraints}) == len(constraints)
        suffix = THINK_SUFFIX if prompt.meta["thinking"] else NO_THINK_SUFFIX
        assert prompt.question.endswith(" " + suffix)
        # The instructions are written into the text, after the original question.
        assert prompt.question.startswith(record.question.replace("\n" + THINK_SUFFIX, "").strip()[:20])
        assert len(prompt.question) > len(record.question) + 10
        assert (prompt.media_path, prompt.source, prompt.task) == (record.media_path, record.source, record.task)
        if record.task == "reasoning":
            assert prompt.meta["thinking"] and prompt.meta["rl_reference"] == record.answer.split("\n\n")[-1]
        elif record.task in ("vqa", "counting"):
            assert prompt.meta["rl_reference"] == record.answer
            assert not {c.kind for c in constraints} & set(ap.FREE_FORM_BUILDERS)
        else:
            assert prompt.meta["rl_reference"] is None
    assert {p.meta["thinking"] for p in prompts} == {True, False}


def test_prompts_are_seeded():
    record = Record(id="t-1", source="t", modality="text", task="instruction", question="Say hi.", answer="hi")
    first = ap.alignment_records([record] * 20, seed=1)
    assert first == ap.alignment_records([record] * 20, seed=1)
    assert first != ap.alignment_records([record] * 20, seed=2)


def test_every_kind_is_drawn_and_no_conflicting_pair_is():
    rng = random.Random(0)
    drawn = [ap.draw_instructions(rng, free_form=i % 2 == 0) for i in range(600)]
    kinds = {i.constraint.kind for draw in drawn for i in draw}
    assert kinds == set(ALL_BUILDERS)
    for draw in drawn:
        pairs = {frozenset((a.constraint.kind, b.constraint.kind)) for a in draw for b in draw if a is not b}
        assert not pairs & ap.CONFLICTS
        for instruction in draw:  # every instruction says something checkable in words
            assert instruction.text.endswith(".") and len(instruction.text.split()) >= 4


# ---- the rule rewards fire --------------------------------------------------------------------------
def compliant(c: Constraint, reference: str | None) -> str:
    """A reply meeting ``c`` alone that still states ``reference`` (when given)."""
    word = reference or "it returns a copy of the given value"
    p = c.params
    return {
        "json_format": lambda: json.dumps({"answer": word}),
        "include_keywords": lambda: f"The {' '.join(p['keywords'])} is {word}",
        "exclude_keywords": lambda: word,
        "ends_with_punctuation": lambda: word + p["marks"],
        "starts_with": lambda: f"{p['prefix']} {word}",
        "max_words": lambda: word,
        "min_words": lambda: " ".join(["word"] * p["limit"]),
        "all_lowercase": lambda: word.lower(),
        "all_uppercase": lambda: word.upper(),
        "no_commas": lambda: word,
        "markdown_list": lambda: "- first item\n- second item",
        "markdown_heading": lambda: "# Summary\nIt copies.",
        "code_block": lambda: "```python\nx = 1\n```",
    }[c.kind]()


def violating(c: Constraint, reference: str | None) -> str:
    """A reply breaking ``c`` that still states ``reference`` (when given)."""
    word = reference or "it returns a copy of the given value"
    p = c.params
    return {
        "json_format": lambda: word,
        "include_keywords": lambda: word,
        "exclude_keywords": lambda: f"{p['keywords'][0]} {word}",
        "ends_with_punctuation": lambda: word + ("?" if p["marks"] != "?" else ";"),
        "starts_with": lambda: f"{word} {p['prefix']}",
        "max_words": lambda: " ".join([word] * (p["limit"] + 1)),
        "min_words": lambda: "too short",
        "all_lowercase": lambda: word.capitalize(),
        "all_uppercase": lambda: word,
        "no_commas": lambda: f"well, {word}",
        "markdown_list": lambda: "- only one item",
        "markdown_heading": lambda: "Summary: it copies.",
        "code_block": lambda: "x = 1",
    }[c.kind]()


def _cases():
    rng = random.Random(0)
    for kind, build in sorted(ALL_BUILDERS.items()):
        for free_form in (True, False) if kind in ap.SHORT_BUILDERS else (True,):
            yield pytest.param(
                build(rng, free_form).constraint, None if free_form else "circle", id=f"{kind}-{free_form}"
            )


@pytest.mark.parametrize(("constraint", "reference"), list(_cases()))
def test_rule_reward_is_one_when_compliant_and_zero_when_not(constraint, reference):
    def sample(response: str, thinking: bool = False) -> RewardSample:
        return RewardSample(
            id="p", query="q", response=response, reference=reference, thinking=thinking, constraints=(constraint,)
        )

    good, bad = compliant(constraint, reference), violating(constraint, reference)
    assert constraint.check(good).score == 1.0, constraint.check(good).reason
    assert constraint.check(bad).score == 0.0, constraint.check(bad).reason
    assert rule_reward(sample(good)).score == 1.0  # answer matches (when there is a reference) and complies
    assert RewardFunction(weights=(("rule", 1.0),))(sample(good)).total == 1.0
    # A violating answer: the constraint part is 0, so the rule reward is 0 without a reference and at
    # most 0.5 (the answer's half) with one.
    answer_part = 0.0 if reference is None else float(judge_answer(bad, reference).match)
    assert rule_reward(sample(bad)).score == answer_part / (1 if reference is None else 2)
    assert rule_reward(sample(bad)).score < 1.0
    # /think asked but no think block: the format gate zeroes even a compliant answer; with one, 1 again.
    assert rule_reward(sample(good, thinking=True)).score == 0.0
    assert rule_reward(sample(f"<think>\nbecause\n</think>\n\n{good}", thinking=True)).score == 1.0


def satisfy_all(constraints: tuple[Constraint, ...], reference: str | None) -> str:
    """One reply meeting every constraint of a drawn set (possible exactly when no ``CONFLICTS`` pair is drawn)."""
    params = {c.kind: c.params for c in constraints}
    words = (
        [reference]
        if reference
        else "python function input result value returns the given number of items here".split()
    )
    if "include_keywords" in params and "json_format" not in params:
        words = [*params["include_keywords"]["keywords"], "is", *words]
    if "json_format" in params:
        text = json.dumps({"answer": " ".join(words)})
    else:
        lines = [params["starts_with"]["prefix"]] if "starts_with" in params else []
        lines += ["# Summary"] if "markdown_heading" in params else []
        lines += ["```python", "x = 1", "```"] if "code_block" in params else []
        if "markdown_list" in params:
            half = max(1, len(words) // 2)
            lines += ["- " + " ".join(words[:half]), "- " + " ".join(words[half:] or ["more"])]
        else:
            lines.append(" ".join(words))
        text = "\n".join(lines) + params.get("ends_with_punctuation", {}).get("marks", "")
    if "all_lowercase" in params:
        text = text.lower()
    if "all_uppercase" in params:
        text = text.upper()
    return text


def test_every_drawn_prompt_can_be_fully_satisfied_and_then_earns_reward_one(curated):
    prompts = ap.alignment_records(curated * 3, seed=5)
    for prompt in prompts:
        constraints = ap.constraints_of(prompt)
        reference = prompt.meta["rl_reference"]
        answer = satisfy_all(constraints, reference)
        assert check_constraints(answer, constraints).score == 1.0, (prompt.question, answer)
        response = f"<think>\nI check the image.\n</think>\n\n{answer}" if prompt.meta["thinking"] else answer
        sample = RewardSample(
            id=prompt.id,
            query=prompt.question,
            response=response,
            reference=reference,
            thinking=prompt.meta["thinking"],
            constraints=constraints,
        )
        assert rule_reward(sample).score == 1.0, (prompt.question, response, rule_reward(sample).reason)


# ---- wiring: the trainer's RL prompt and the alignment mix --------------------------------------------
def test_the_trainer_reads_constraints_switch_and_reference_from_a_shard_record(curated):
    prompts = ap.alignment_records(curated, seed=0)
    for prompt in (next(p for p in prompts if p.task == "vqa"), next(p for p in prompts if p.modality == "text")):
        record = json.loads(prompt.to_json())  # what a shard's .json holds
        example = Example(sample_id=prompt.id, record=record, user_parts=[{"type": "text", "text": record["question"]}])
        rl = rl_prompt(example)
        assert rl.constraints == ap.constraints_of(prompt)
        assert rl.think_mode is prompt.meta["thinking"]
        assert rl.reference == prompt.meta["rl_reference"]
    # A curated record without alignment fields keeps today's behaviour: its answer is the reference.
    plain = json.loads(curated[0].to_json())
    rl = rl_prompt(Example(sample_id="x", record=plain, user_parts=[{"type": "text", "text": "q"}]))
    assert rl.reference == curated[0].answer and rl.constraints == ()


def test_the_alignment_mix_is_made_of_prompts_and_sft_adds_instructed_records(curated):
    aligned = ap.mix_records("alignment_rl", curated, 0)
    assert aligned == ap.alignment_records(curated, 0) and aligned != curated
    sft = ap.mix_records("sft", curated, 0)
    assert sft == ap.instructed_records(curated, 0) and sft[: len(curated)] == curated
    assert ap.mix_records("stage2", curated, 0) == curated


def test_an_instructed_answer_meets_its_instructions_and_keeps_a_short_answer(curated):
    """Every instructed SFT record: its alignment prompt, the answer rewritten to meet every constraint
    (the alignment reward's own check), a short answer still matched, a think block only where the record
    reasons. Nearly every drawn record complies; free-form and short answers are both represented."""
    by_id = {r.id: r for r in curated}
    made = ap.instructed_records(curated, seed=5)[len(curated) :]
    assert len(made) >= 0.8 * ap.INSTRUCTED_SHARE * len(curated)
    assert {r.source for r in made} == {"easy-vqa", "text-instructions"}
    kinds = set()
    for record in made:
        assert record.id.endswith(ap.INSTRUCTED_SUFFIX)
        source = by_id[ap.source_record_id(record.id)]
        reasoning, answer = split_thinking(record.answer)
        constraints = ap.constraints_of(record)
        kinds |= {c.kind for c in constraints}
        assert check_constraints(answer, constraints).score == 1.0, (record.question, answer)
        assert record.meta["thinking"] is bool(split_thinking(source.answer)[0]) is bool(reasoning)
        assert record.question.startswith(source.question.removesuffix(NO_THINK_SUFFIX).strip())
        if record.meta["rl_reference"] is not None:
            assert judge_answer(answer, record.meta["rl_reference"]).match
    assert kinds >= {"json_format", "all_uppercase", "starts_with", "markdown_list", "code_block", "min_words"}


def test_complying_answer_by_example(curated):
    vqa = next(r for r in curated if r.task == "vqa")
    text = next(r for r in curated if r.source == "text-instructions")
    answer_and_bang = [
        Constraint(kind="include_keywords", params={"keywords": ["answer"]}),
        Constraint(kind="ends_with_punctuation", params={"marks": "!"}),
    ]
    assert ap.complying_answer("circle", answer_and_bang, vqa) == "The answer is circle!"
    assert ap.complying_answer("circle", [Constraint(kind="json_format")], vqa) == '{"answer": "circle"}'
    # a short answer is never cut to fit a word limit: no reply rather than a wrong one
    too_short = [
        Constraint(kind="max_words", params={"limit": 1}),
        Constraint(kind="starts_with", params={"prefix": "Answer:"}),
    ]
    assert ap.complying_answer("circle", too_short, vqa) is None
    listed = ap.complying_answer(
        "Return the sum. It never fails, mostly.",
        [
            Constraint(kind="markdown_list", params={"min_items": 2}),
            Constraint(kind="no_commas"),
            Constraint(kind="all_uppercase"),
        ],
        text,
    )
    assert listed == "- RETURN THE SUM.\n- IT NEVER FAILS MOSTLY."
    coded = ap.complying_answer("Return the sum.", [Constraint(kind="code_block", params={"language": "python"})], text)
    assert coded == f"```python\nhelp({text.meta['function']})\n```\nReturn the sum."


def test_alignment_shards_round_trip_to_rl_prompts(curated, tmp_path):
    """The curate flow's path: prompts -> shards of the alignment_rl mix -> the trainer's RL prompts."""
    from data_specs.mixes import get_mix
    from keye_model.training.examples import to_example
    from keye_model.training.loader import read_shard
    from tasks.shards import ShardConfig, shard_stage

    records = [r for r in curated if r.modality == "text"] + [r for r in curated if r.modality == "image"]
    mix = get_mix("alignment_rl")
    text_only = type(mix)(name=mix.name, modality_ratios={"image": 0.5, "text": 0.5})
    shards = shard_stage(
        ap.mix_records("alignment_rl", records, 0), text_only, ShardConfig(mix="alignment_rl", out_dir=str(tmp_path))
    )
    by_id = {r.id: r for r in ap.alignment_records(records, 0)}
    seen = 0
    for shard in shards.shards:
        for sample in read_shard(shard.path):
            rl = rl_prompt(to_example(sample, tmp_path / "media"))
            source = by_id[json.loads(sample["json"])["id"]]
            assert rl.constraints == ap.constraints_of(source) and rl.reference == source.meta["rl_reference"]
            seen += 1
    assert seen == shards.num_records > 0
