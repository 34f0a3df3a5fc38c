"""Few-shot probe of the vision encoder: do its pooled features separate classes without any training?

Each image becomes one vector (the ViT's patch features, mean-pooled per image); the few labelled
"shots" of each class are averaged into a prototype; a held-out image is assigned the class of the
nearest prototype (cosine similarity). Accuracy is reported beside chance (1 / number of classes), so an
encoder that has learned nothing sits near chance and a useful one well above it.

Labelled sets, all packaged with installed libraries (no download):
- ``photo_probe_set``: scikit-image photographs, one class per photo, views made by random crops, flips,
  brightness changes and noise (a shot and a test image are never the same view);
- ``easy_vqa_probe_set``: easy-vqa test images labelled by their shape or colour, read off the
  questions that name it ("what shape is in the image?" -> "circle").

Worked example of the rule: prototypes red = (1, 0), blue = (0, 1); a test vector (0.9, 0.2) has cosine
0.98 to red and 0.22 to blue -> red.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

#: images -> (num_images, dim) features; any function, so the probe rule is testable without a model.
FeatureFn = Callable[[Sequence[np.ndarray]], np.ndarray]
PROBE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins")
EASY_VQA_SHAPES = ("circle", "rectangle", "triangle")
EASY_VQA_COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")


@dataclass(frozen=True, kw_only=True)
class ProbeSet:
    """Labelled few-shot images and held-out images of the same classes."""

    name: str
    """Where the images come from ("photos", "easy-vqa-shape" ...)."""
    shot_images: tuple[np.ndarray, ...]
    """Images the class prototypes are made from (H x W x 3 uint8)."""
    shot_labels: tuple[str, ...]
    """Class of each shot image."""
    test_images: tuple[np.ndarray, ...]
    """Held-out images to classify."""
    test_labels: tuple[str, ...]
    """True class of each test image."""


@dataclass(frozen=True, kw_only=True)
class ProbeResult:
    """How well nearest-prototype classification worked."""

    accuracy: float
    """Share of test images assigned their true class."""
    chance: float
    """1 / num_classes: the accuracy of guessing."""
    num_classes: int
    """Classes with prototypes."""
    num_shots: int
    """Shot images used for the prototypes (all classes)."""
    num_test: int
    """Test images classified."""

    def as_metrics(self, prefix: str = "probe/") -> dict[str, float]:
        """Flat ``{prefix + field: value}``."""
        return {f"{prefix}{name}": float(value) for name, value in vars(self).items()}


def nearest_centroid_predict(
    shot_features: np.ndarray, shot_labels: Sequence[str], test_features: np.ndarray
) -> list[str]:
    """Label of the prototype (class-mean of the L2-normalized shots) with the highest cosine per test row."""
    if len(shot_features) != len(shot_labels):
        raise ValueError(f"{len(shot_features)} shot feature rows for {len(shot_labels)} labels")
    if len(shot_features) == 0:
        raise ValueError("the probe needs at least one shot image")
    classes = sorted(set(shot_labels))
    shots = _unit(np.asarray(shot_features, dtype=np.float64))
    labels = np.asarray(shot_labels)
    prototypes = _unit(np.stack([shots[labels == c].mean(axis=0) for c in classes]))
    similarity = _unit(np.asarray(test_features, dtype=np.float64)) @ prototypes.T
    return [classes[i] for i in similarity.argmax(axis=1)]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def run_probe(features: FeatureFn, probe_set: ProbeSet) -> ProbeResult:
    """Embed shots and test images with ``features``; classify the test images by nearest prototype."""
    if not probe_set.test_images:
        raise ValueError(f"probe set {probe_set.name!r} has no test images")
    unknown = sorted(set(probe_set.test_labels) - set(probe_set.shot_labels))
    if unknown:
        raise ValueError(f"probe set {probe_set.name!r}: test classes {unknown} have no shot images")
    predicted = nearest_centroid_predict(
        features(probe_set.shot_images), probe_set.shot_labels, features(probe_set.test_images)
    )
    accuracy = float(np.mean([p == t for p, t in zip(predicted, probe_set.test_labels)]))
    num_classes = len(set(probe_set.shot_labels))
    result = ProbeResult(
        accuracy=accuracy,
        chance=1.0 / num_classes,
        num_classes=num_classes,
        num_shots=len(probe_set.shot_images),
        num_test=len(probe_set.test_images),
    )
    log.info(
        "probe %s: accuracy %.3f (chance %.3f) on %d test images",
        probe_set.name,
        result.accuracy,
        result.chance,
        result.num_test,
    )
    return result


def random_init_vision(model, seed: int = 0) -> SimpleNamespace:
    """``model``'s ViT with fresh weights from the model's one init rule: the probe's baseline.

    Returns an object with ``vision`` and ``device``, which is all ``vit_features`` reads.
    """
    from keye_model.model import init_weights

    vision = copy.deepcopy(model.vision)
    torch.manual_seed(seed)
    init_weights(vision, model.config.vision.initializer_range)
    return SimpleNamespace(vision=vision.eval(), device=model.device)


def vit_features(model, processor) -> FeatureFn:
    """A FeatureFn over ``model.vision``: each image resized as the processor does, patch features mean-pooled.

    ``model`` is a KeyeForConditionalGeneration, ``processor`` a KeyeProcessor. Images go through the
    encoder one batch at a time (block-diagonal attention keeps them independent).
    """

    def embed(images: Sequence[np.ndarray]) -> np.ndarray:
        patches, grids = [], []
        for number, image in enumerate(images):
            image_patches, grid = processor.load_image(image, f"probe image {number}")
            patches.append(image_patches)
            grids.append(grid)
        grid_hw = torch.tensor(grids, dtype=torch.long)
        dtype = model.vision.embeddings.patch_embedding.weight.dtype
        pixel_values = torch.from_numpy(np.concatenate(patches)).to(model.device, dtype)
        with torch.no_grad():
            features_ND = model.vision(pixel_values, grid_hw.to(model.device)).float()
        sizes = grid_hw.prod(dim=-1).tolist()
        return torch.stack([part.mean(dim=0) for part in features_ND.split(sizes)]).cpu().numpy()

    return embed


# ---- labelled sets -------------------------------------------------------------------------------


def augment(photo: np.ndarray, rng: random.Random, size: tuple[int, int]) -> np.ndarray:
    """A random view of ``photo`` at ``size`` (height, width): crop of 60-100% per side, flip, brightness, noise."""
    height, width = photo.shape[:2]
    crop_h, crop_w = round(height * rng.uniform(0.6, 1.0)), round(width * rng.uniform(0.6, 1.0))
    top, left = rng.randrange(height - crop_h + 1), rng.randrange(width - crop_w + 1)
    view = Image.fromarray(photo[top : top + crop_h, left : left + crop_w]).resize(
        (size[1], size[0]), Image.Resampling.BILINEAR
    )
    pixels = np.asarray(view, dtype=np.float32)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    pixels = pixels * rng.uniform(0.8, 1.2)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0.0, 4.0, pixels.shape)
    return np.clip(np.rint(pixels + noise), 0, 255).astype(np.uint8)


def photo_probe_set(
    num_shots: int = 4,
    num_test: int = 4,
    *,
    photos: Sequence[str] = PROBE_PHOTOS,
    size: tuple[int, int] = (56, 56),
    seed: int = 0,
) -> ProbeSet:
    """``num_shots`` + ``num_test`` augmented views of each scikit-image photograph, one class per photo."""
    import skimage.data

    rng = random.Random(seed)
    shots, shot_labels, tests, test_labels = [], [], [], []
    for name in photos:
        photo = np.asarray(Image.fromarray(getattr(skimage.data, name)()).convert("RGB"))
        for index in range(num_shots + num_test):
            view = augment(photo, rng, size)
            (shots if index < num_shots else tests).append(view)
            (shot_labels if index < num_shots else test_labels).append(name)
    return ProbeSet(
        name="photos",
        shot_images=tuple(shots),
        shot_labels=tuple(shot_labels),
        test_images=tuple(tests),
        test_labels=tuple(test_labels),
    )


def easy_vqa_labels(attribute: str) -> dict[int, str]:
    """easy-vqa test image id -> its shape or colour, read off the answers of the questions about it."""
    import easy_vqa

    vocabulary = {"shape": EASY_VQA_SHAPES, "color": EASY_VQA_COLORS}.get(attribute)
    if vocabulary is None:
        raise ValueError(f"easy-vqa probe attribute must be 'shape' or 'color', got {attribute!r}")
    labels: dict[int, str] = {}
    for _question, answer, image_id in zip(*easy_vqa.get_test_questions()):
        if answer in vocabulary:
            labels.setdefault(image_id, answer)
    return labels


def easy_vqa_probe_set(attribute: str = "shape", num_shots: int = 4, num_test: int = 4, *, seed: int = 0) -> ProbeSet:
    """easy-vqa test images by shape or colour: per class ``num_shots`` shots and ``num_test`` test images."""
    import easy_vqa

    labels = easy_vqa_labels(attribute)
    paths = easy_vqa.get_test_image_paths()
    by_class: dict[str, list[int]] = {}
    for image_id in sorted(labels):
        by_class.setdefault(labels[image_id], []).append(image_id)
    rng = random.Random(seed)
    shots, shot_labels, tests, test_labels = [], [], [], []
    for label in sorted(by_class):
        ids = by_class[label]
        if len(ids) < num_shots + num_test:
            raise ValueError(f"easy-vqa {attribute} {label!r}: {len(ids)} images, need {num_shots + num_test}")
        picked = rng.sample(ids, num_shots + num_test)
        for index, image_id in enumerate(picked):
            with Image.open(paths[image_id]) as opened:
                pixels = np.asarray(opened.convert("RGB"))
            (shots if index < num_shots else tests).append(pixels)
            (shot_labels if index < num_shots else test_labels).append(label)
    return ProbeSet(
        name=f"easy-vqa-{attribute}",
        shot_images=tuple(shots),
        shot_labels=tuple(shot_labels),
        test_images=tuple(tests),
        test_labels=tuple(test_labels),
    )


def probe_set_named(name: str, num_shots: int, num_test: int, seed: int = 0) -> ProbeSet:
    """ "photos", "easy-vqa-shape" or "easy-vqa-color" (the names an EvalConfig uses)."""
    if name == "photos":
        return photo_probe_set(num_shots, num_test, seed=seed)
    if name in ("easy-vqa-shape", "easy-vqa-color"):
        return easy_vqa_probe_set(name.rsplit("-", 1)[1], num_shots, num_test, seed=seed)
    raise ValueError(f"unknown probe set {name!r}; choose photos, easy-vqa-shape or easy-vqa-color")
