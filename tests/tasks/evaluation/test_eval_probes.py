"""The nearest-prototype probe: exact on a separable set, and the real ViT path end to end."""

from __future__ import annotations

import easy_vqa
import numpy as np
import pytest

from tasks.evaluation.probes import (
    ProbeSet,
    easy_vqa_labels,
    easy_vqa_probe_set,
    nearest_centroid_predict,
    photo_probe_set,
    run_probe,
    vit_features,
)
from tasks.evaluation.run import evaluate_probe


def mean_colour(images) -> np.ndarray:
    """An identity-like feature: the mean RGB of each image."""
    return np.stack([np.asarray(image, dtype=np.float64).mean(axis=(0, 1)) for image in images])


def solid_set(seed: int = 0) -> ProbeSet:
    """Noisy solid-colour squares: red, green and blue classes, trivially separable by colour."""
    rng = np.random.default_rng(seed)
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}

    def views(colour, count):
        return [
            np.clip(np.asarray(colour) + rng.normal(0, 20, (28, 28, 3)), 0, 255).astype(np.uint8) for _ in range(count)
        ]

    shots = [(name, image) for name, colour in colours.items() for image in views(colour, 2)]
    tests = [(name, image) for name, colour in colours.items() for image in views(colour, 5)]
    return ProbeSet(
        name="solid",
        shot_images=tuple(i for _, i in shots),
        shot_labels=tuple(n for n, _ in shots),
        test_images=tuple(i for _, i in tests),
        test_labels=tuple(n for n, _ in tests),
    )


def test_worked_example_of_the_rule():
    shots = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert nearest_centroid_predict(shots, ["red", "blue"], np.array([[0.9, 0.2], [0.1, 3.0]])) == ["red", "blue"]


def test_separable_set_scores_one_and_reports_chance():
    result = run_probe(mean_colour, solid_set())
    assert result.accuracy == 1.0
    assert result.chance == pytest.approx(1 / 3)
    assert (result.num_classes, result.num_shots, result.num_test) == (3, 6, 15)
    assert result.as_metrics()["probe/accuracy"] == 1.0


def test_a_useless_feature_sits_at_chance():
    constant = lambda images: np.ones((len(images), 4))  # noqa: E731 -- every image looks the same
    result = run_probe(constant, solid_set())
    assert result.accuracy == pytest.approx(1 / 3)  # all assigned to one class: 5 of 15


def test_unknown_test_class_is_named():
    probe = solid_set()
    broken = ProbeSet(
        name="solid",
        shot_images=probe.shot_images[:2],
        shot_labels=probe.shot_labels[:2],
        test_images=probe.test_images,
        test_labels=probe.test_labels,
    )
    with pytest.raises(ValueError, match=r"solid.*\['blue', 'green'\] have no shot images"):
        run_probe(mean_colour, broken)


def test_labelled_sets_have_the_asked_shape():
    photos = photo_probe_set(2, 3, photos=("coffee", "rocket"), size=(56, 56), seed=1)
    assert len(photos.shot_images) == 4 and len(photos.test_images) == 6
    assert photos.shot_images[0].shape == (56, 56, 3) and photos.test_labels == ("coffee",) * 3 + ("rocket",) * 3
    assert not any(np.array_equal(s, t) for s in photos.shot_images for t in photos.test_images)
    labels = easy_vqa_labels("shape")
    assert set(labels.values()) == {"circle", "rectangle", "triangle"}
    shapes = easy_vqa_probe_set("shape", 1, 2)
    assert shapes.shot_labels == ("circle", "rectangle", "triangle") and len(shapes.test_images) == 6
    colours = easy_vqa_labels("color")
    assert len(set(colours.values())) == 8 and len(colours) > 500
    for question, answer, image_id in list(zip(*easy_vqa.get_test_questions()))[:50]:
        if question.startswith("what color"):
            assert colours[image_id] == answer, (question, image_id)


def test_vit_features_pool_per_image(eval_model):
    embed = vit_features(eval_model.model, eval_model.processor)
    probe = solid_set()
    features = embed(probe.test_images[:3])
    assert features.shape == (3, eval_model.model.config.vision.hidden_size)
    alone = embed(probe.test_images[1:2])  # block-diagonal attention: a batch does not mix images
    np.testing.assert_allclose(features[1:2], alone, rtol=1e-4, atol=1e-5)


def test_evaluate_probe_real_vit_end_to_end(eval_model):
    metrics = evaluate_probe(eval_model, "photos", num_shots=2, num_test=2)
    assert metrics["probe/num_classes"] == 6 and metrics["probe/chance"] == pytest.approx(1 / 6)
    assert 0.0 <= metrics["probe/accuracy"] <= 1.0
