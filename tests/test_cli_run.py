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
