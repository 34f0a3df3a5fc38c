"""DataMix: ratios validated on construction; the stage-3 preset is the report's 24/50/26."""

from __future__ import annotations

import pytest

from data_specs.mixes import PRESETS, DataMix, get_mix, stage3_mix


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_sum_to_one(name):
    mix = get_mix(name)
    assert mix.name == name
    assert sum(mix.modality_ratios.values()) == pytest.approx(1.0)


def test_stage3_is_the_reports_token_mix():
    assert stage3_mix().planned() == {"image": 0.50, "video": 0.24, "text": 0.26}


@pytest.mark.parametrize(
    "ratios, message",
    [
        ({"image": 0.5, "video": 0.24, "text": 0.25}, "sum to 1"),
        ({"image": 0.5, "audio": 0.5}, "unknown modalities"),
        ({"image": 1.2, "text": -0.2}, ">= 0"),
        ({}, "no ratios"),
    ],
)
def test_bad_modality_ratios_raise_naming_the_mix(ratios, message):
    with pytest.raises(ValueError, match=message) as info:
        DataMix(name="custom", modality_ratios=ratios)
    assert "custom" in str(info.value)


def test_source_ratios_must_sum_to_one_and_name_a_planned_modality():
    ok = DataMix(
        name="s",
        modality_ratios={"image": 0.5, "text": 0.5},
        source_ratios={"image": {"easy-vqa": 0.25, "skimage": 0.75}},
    )
    assert ok.source_ratios["image"]["skimage"] == 0.75
    with pytest.raises(ValueError, match="image sources"):
        DataMix(name="s", modality_ratios={"image": 1.0}, source_ratios={"image": {"a": 0.5, "b": 0.4}})
    with pytest.raises(ValueError, match="has no share"):
        DataMix(name="s", modality_ratios={"image": 1.0}, source_ratios={"video": {"a": 1.0}})


def test_a_mix_named_like_a_stage_is_that_stages_own_mix():
    """A name shared by a mix and a stage must mean the same data either way (``sft``), never another
    stage's data (as ``alignment``, stage 1's mix and the alignment-RL stage, once did)."""
    from data_specs.presets import stages

    for preset in ("tiny", "keye-8b"):
        for stage in stages(preset):
            if stage.name in PRESETS:
                assert stage.data_mix == stage.name, (preset, stage.name, stage.data_mix)
    assert stages("tiny")[0].data_mix == "image_text" and get_mix("image_text").planned() == {"image": 1.0}


def test_round_trips_through_a_plain_dict_and_rejects_unknown_mix():
    mix = DataMix(
        name="s", modality_ratios={"image": 0.5, "text": 0.5}, source_ratios={"text": {"t": 1.0}}, tolerance=0.02
    )
    assert DataMix.from_dict(mix.to_dict()) == mix
    captions = get_mix("image_captions")
    assert DataMix.from_dict(captions.to_dict()) == captions and captions.tasks == ("caption",)
    assert captions.takes("caption") and not captions.takes("vqa") and mix.takes("vqa")
    with pytest.raises(ValueError, match="nonesuch"):
        get_mix("nonesuch")
