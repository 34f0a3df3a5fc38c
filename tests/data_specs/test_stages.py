from __future__ import annotations

import dataclasses

import pytest

from data_specs import presets, stages


@pytest.mark.parametrize("preset", presets.PRESETS)
def test_every_stage_round_trips_and_inputs_point_backwards(preset):
    seen = set()
    for stage in presets.stages(preset):
        assert stages.StageSpec.from_json(stage.to_json()) == stage
        assert set(stage.inputs) <= seen, f"{stage.name} starts from a later stage"
        seen.add(stage.name)


def test_keye_8b_follows_the_report():
    s = {st.name: st for st in presets.stages("keye-8b")}
    assert s["stage1"].trainable == ("projector",)
    assert set(s["stage2"].trainable) == {"vision", "projector", "llm"} and s["stage2"].seq_len == 8192
    assert s["stage3"].rope_theta == 8_000_000 and s["stage3"].seq_len == 131_072
    assert s["stage3"].data_mix == "annealing"
    assert s["stage4"].objective == "fusion" and s["stage4"].inputs == ("stage2", "stage3", "expert")
    assert [st.name for st in presets.stages("keye-8b")][5:] == [
        "sft",
        "mpo",
        "reward",
        "reward_rl",
        "reward_anneal",
        "coldstart",
        "gspo",
        "alignment",
    ]
    assert s["gspo"].rl.clip_low == 3e-4 and s["gspo"].rl.clip_high == 4e-4 and s["gspo"].rl.num_minibatches == 4
    # Keye-Reward: SFT, then RL, then the length-bias annealing pass; alignment is judged by the last of them
    assert [s[n].inputs for n in ("reward_rl", "reward_anneal")] == [("reward",), ("reward_rl",)]
    assert [s[n].data_mix for n in ("reward", "reward_rl")] == ["reward_pairs", "reward_pairs"]
    assert s["reward_rl"].objective == "reward_gspo"
    assert (s["reward_anneal"].objective, s["reward_anneal"].data_mix) == ("reward", "reward_anneal")
    assert s["alignment"].reward_model == "reward_anneal"


def test_tiny_keeps_what_a_stage_is_and_shrinks_how_long():
    for big, tiny in zip(presets.stages("keye-8b"), presets.stages("tiny")):
        assert (tiny.name, tiny.objective, tiny.trainable, tiny.rope_theta, tiny.data_mix) == (
            big.name,
            big.objective,
            big.trainable,
            big.rope_theta,
            big.data_mix,
        )
        assert tiny.num_steps <= 4


def test_a_preset_from_random_weights_pretrains_its_vit_first():
    """The longer demo pre-trains its random-init ViT first, and stage 1 starts from it; the report's preset
    loads SigLIP instead, and the test preset keeps the report's stages (so does the 10-minute demo)."""
    for name in ("demo-long",):
        first, stage1 = presets.stages(name)[:2]
        assert (first.name, first.objective, first.data_mix, first.inputs) == (
            stages.VISION_PRETRAIN,
            "siglip",
            "image_captions",
            (),
        )
        assert first.optimizer.lr_scales == () and stage1.optimizer.lr_scales == (("vision", 0.1),)
        assert stage1.name == "stage1" and stage1.inputs == (stages.VISION_PRETRAIN,)
        assert "image_captions" in presets.get_preset(name).curated_mixes()
    for name in ("tiny", "demo", "keye-8b"):
        assert stages.VISION_PRETRAIN not in [s.name for s in presets.stages(name)]
        assert "image_captions" not in presets.get_preset(name).curated_mixes()
    with pytest.raises(ValueError, match="already starts from"):
        stages.from_scratch(presets.stages("tiny")[1:])


def test_bad_specs_name_the_stage():
    good = presets.get_stage("tiny", "stage1")
    with pytest.raises(ValueError, match="stage1.*groups"):
        dataclasses.replace(good, trainable=("decoder",))
    with pytest.raises(ValueError, match="rl settings"):
        dataclasses.replace(good, objective="gspo")
    with pytest.raises(ValueError, match="no stage"):
        presets.get_stage("tiny", "stage9")


@pytest.mark.parametrize("preset", presets.PRESETS)
def test_every_stage_names_a_known_data_mix(preset):
    from data_specs import mixes

    for stage in presets.stages(preset):
        assert stage.data_mix in mixes.PRESETS or stage.data_mix in mixes.GENERATED, stage.name


def test_the_demo_tuning_tables_name_real_stages():
    """The demos' per-stage steps, batches and rates are keyed by stage name: a renamed stage would silently
    fall back to the defaults (or, for steps, fail deep inside ``demo()``), so every key must name a stage."""
    names = {s.name for s in stages.from_scratch(stages.keye_8b_stages())}
    for table in (presets.DEMO_STEPS, presets.DEMO_LONG_STEPS, presets.DEMO_MICRO_BATCH, presets.DEMO_LR):
        assert set(table) <= names, sorted(set(table) - names)
    assert set(presets.DEMO_LONG_STEPS) == names and set(presets.DEMO_STEPS) == names - {stages.VISION_PRETRAIN}


@pytest.mark.parametrize("preset", presets.PRESETS)
def test_the_cold_start_mix_in_share_is_a_share(preset):
    """Every preset mixes SFT records into its cold-start set (a share below 1: a set of SFT records alone
    would be no cold-start), and a preset refuses a share outside [0, 1)."""
    chosen = presets.get_preset(preset)
    assert 0 < chosen.longcot_mix_in_share < 1
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="longcot_mix_in_share must be in"):
            dataclasses.replace(chosen, longcot_mix_in_share=bad)


@pytest.mark.parametrize("preset", presets.PRESETS)
def test_the_generated_mixes_name_the_model_that_generates_them(preset):
    """A stage on a mix the chain generates says which stage's model writes it (``data_from``, SFT in every
    preset); a curated mix has none; one model writes all of a run's generated data."""
    from data_specs import mixes

    chosen = presets.get_preset(preset)
    for stage in chosen.stages:
        assert (stage.data_from is not None) == (stage.data_mix in mixes.GENERATED), stage.name
    assert {s.data_from for s in chosen.stages} - {None} == {"sft"}


def test_a_preset_refuses_a_generated_mix_without_its_model():
    chosen = presets.get_preset("tiny")
    cold = chosen.stage("coldstart")

    def with_cold(**changes):
        swapped = tuple(dataclasses.replace(s, **changes) if s.name == cold.name else s for s in chosen.stages)
        return dataclasses.replace(chosen, stages=swapped)

    with pytest.raises(ValueError, match="coldstart trains on the generated mix 'longcot'; set its data_from"):
        with_cold(data_from=None)
    with pytest.raises(ValueError, match="coldstart's data generator 'gspo' is not an earlier stage"):
        with_cold(data_from="gspo")
    with pytest.raises(ValueError, match=r"one stage's model, not \['mpo', 'sft'\]"):
        with_cold(data_from="mpo")
    with pytest.raises(ValueError, match="data_from names the model that generates"):
        dataclasses.replace(chosen.stage("sft"), data_from="stage4")
