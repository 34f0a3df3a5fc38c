"""``keye run --help`` / ``keye demo --help``: a description of what the command does and help on every
option, so a new user learns from the help alone."""

from __future__ import annotations

import argparse

import pytest

from keye_cli.main import build_parser


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return subparsers.choices[name]


@pytest.mark.parametrize("name", ["run", "demo"])
def test_help_describes_the_command_and_every_option(name, capsys):
    parser = _subparser(name)
    assert parser.description and "stage" in parser.description
    undocumented = [a.dest for a in parser._actions if not a.help]
    assert not undocumented, f"keye {name}: options without help: {undocumented}"
    with pytest.raises(SystemExit):
        build_parser().parse_args([name, "--help"])
    out = capsys.readouterr().out
    assert "curate" in out and "--review-mode" in out and "LongCoT human review" in out


def test_lineage_help_has_no_raw_markup(capsys):
    for argv in (["lineage", "--help"], ["lineage", "runs", "--help"], ["lineage", "mix", "--help"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
        out = capsys.readouterr().out
        assert "``" not in out and ":func:" not in out, (argv, out)


def test_the_demo_summary_prints_the_chain_and_each_hint_table(tmp_path):
    import json

    from keye_cli.run import chain_lines, hint_tables, stage_table

    chain = {
        "longcot/paths": 10.0,
        "longcot/tier_A": 4.0,
        "longcot/tier_B": 2.0,
        "longcot/tier_C": 4.0,
        "longcot/pass_share": 0.6,
        "longcot/to_review": 3.0,
        "longcot/review_rejected": 1.0,
        "longcot/kept": 5.0,
        "pairs/total": 8.0,
        "pairs/model_vs_model": 7.0,
        "pairs/model_vs_model_share": 0.875,
        "rl_prompts/kept": 6.0,
    }
    gspo = tmp_path / "stages" / "gspo"
    gspo.mkdir(parents=True)
    rows = [{"step": 1, "gspo/all_wrong_no_hint": 0.5, "gspo/all_wrong_L1": 0.25, "gspo/groups": 4.0}]
    gspo.joinpath("metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tables = hint_tables("tiny", str(tmp_path))
    assert list(tables) == ["gspo"]  # alignment gives no hints; stages without metrics are left out
    text = "\n".join(chain_lines(chain, tables))
    assert "tier A 4, B 2, C 4 (60% pass)" in text and "model-vs-model 7 (88%)" in text
    assert "gspo all-wrong rollout groups (of 4): no_hint 50.0% -> L1 25.0%" in text
    assert chain_lines({}, tables) == []
    table = stage_table(
        {
            "sft": {"vqa/accuracy": 0.8, "vqa/ci95_low": 0.77, "vqa/ci95_high": 0.82, "caption/loss": 1.5},
            "mpo": {"vqa/accuracy": 0.81},
        },
        minutes={"sft": 4.25},
    )
    assert "train min" in table[0]
    assert table[2].split()[:4] == ["sft", "4.2", "0.800", "[0.770,"] and "1.500" in table[2]
    assert table[3].split()[:3] == ["mpo", "-", "-"]  # no minutes, no interval: "-"
