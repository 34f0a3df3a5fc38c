"""DataMix: ratios validated on construction; the stage-3 preset is the report's 24/50/26."""

from __future__ import annotations

import pytest

from data_specs.mixes import PRESETS, DataMix, get_mix, stage3_mix


@pytest.mark.parametrize("stage", sorted(PRESETS))
def test_presets_sum_to_one(stage):
    mix = get_mix(stage)
    assert mix.stage == stage
    assert sum(mix.modality_ratios.values()) == pytest.approx(1.0)


def test_stage3_is_the_reports_token_mix():
    assert stage3_mix().planned() == {"image": 0.50, "video": 0.24, "text": 0.26}


@pytest.mark.parametrize("ratios, message", [
    ({"image": 0.5, "video": 0.24, "text": 0.25}, "sum to 1"),
    ({"image": 0.5, "audio": 0.5}, "unknown modalities"),
    ({"image": 1.2, "text": -0.2}, ">= 0"),
    ({}, "no ratios"),
])
def test_bad_modality_ratios_raise_naming_the_stage(ratios, message):
    with pytest.raises(ValueError, match=message) as info:
        DataMix(stage="custom", modality_ratios=ratios)
    assert "custom" in str(info.value)


def test_source_ratios_must_sum_to_one_and_name_a_planned_modality():
    ok = DataMix(stage="s", modality_ratios={"image": 0.5, "text": 0.5},
                 source_ratios={"image": {"easy-vqa": 0.25, "skimage": 0.75}})
    assert ok.source_ratios["image"]["skimage"] == 0.75
    with pytest.raises(ValueError, match="image sources"):
        DataMix(stage="s", modality_ratios={"image": 1.0}, source_ratios={"image": {"a": 0.5, "b": 0.4}})
    with pytest.raises(ValueError, match="has no share"):
        DataMix(stage="s", modality_ratios={"image": 1.0}, source_ratios={"video": {"a": 1.0}})


def test_round_trips_through_a_plain_dict_and_rejects_unknown_mix():
    mix = DataMix(stage="s", modality_ratios={"image": 0.5, "text": 0.5}, source_ratios={"text": {"t": 1.0}},
                  tolerance=0.02)
    assert DataMix.from_dict(mix.to_dict()) == mix
    with pytest.raises(ValueError, match="nonesuch"):
        get_mix("nonesuch")
