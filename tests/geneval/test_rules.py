"""GenEval's rules: true renders pass, blank/noise fail, and each kind of mistake is caught."""
from __future__ import annotations

import numpy as np
import pytest

from harness.data.shapes import Scene, ShapeObject, render, scene_from_metadata
from harness.geneval.prompts import make_prompts
from harness.geneval.rules import explain, score_image, summarize

BG = (60, 60, 64)


def _image(*objects: tuple[str, str, float, float, float]) -> np.ndarray:
    return render(Scene([ShapeObject(*o) for o in objects], BG, "", ""), 32)


@pytest.fixture(scope="module")
def prompts():
    return make_prompts(12, seed=0, split="compositional")


def _score(prompts, make_image) -> dict[str, float]:
    return summarize([{"tag": p["tag"], "correct": score_image(make_image(p), p)} for p in prompts for _ in range(2)])


def test_true_renders_of_the_prompts_score_near_one(prompts):
    rng = np.random.default_rng(1)
    summary = _score(prompts, lambda p: render(scene_from_metadata(p, rng), 32))
    assert summary["overall"] >= 0.98, summary


def test_blank_and_noise_images_score_near_zero(prompts):
    rng = np.random.default_rng(2)
    blank = _score(prompts, lambda p: np.full((32, 32, 3), rng.integers(0, 256), np.uint8))
    noise = _score(prompts, lambda p: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert blank["overall"] <= 0.05 and noise["overall"] <= 0.05, (blank, noise)


COUNTING = {
    "tag": "counting", "prompt": "a photo of two circles",
    "include": [{"class": "circle", "count": 2}], "exclude": [{"class": "circle", "count": 3}],
}


def test_counting_needs_the_exact_number():
    two = _image(("circle", "red", 0.25, 0.25, 0.12), ("circle", "blue", 0.75, 0.75, 0.12))
    three = _image(("circle", "red", 0.25, 0.25, 0.12), ("circle", "blue", 0.75, 0.75, 0.12), ("circle", "green", 0.25, 0.75, 0.12))
    one = _image(("circle", "red", 0.25, 0.25, 0.12))
    assert score_image(two, COUNTING)
    assert explain(three, COUNTING) == ["expected circle<3, found 3"]
    assert explain(one, COUNTING) == ["expected circle>=2, found 1"]


def test_other_classes_do_not_count():
    extra_square = _image(("circle", "red", 0.25, 0.25, 0.12), ("circle", "blue", 0.75, 0.75, 0.12), ("square", "red", 0.25, 0.75, 0.12))
    assert score_image(extra_square, COUNTING)


POSITION = {
    "tag": "position", "prompt": "a photo of a triangle left of a square",
    "include": [{"class": "square", "count": 1}, {"class": "triangle", "count": 1, "position": ["left of", 0]}],
}


def test_position_is_checked_against_the_target_group():
    right = _image(("triangle", "red", 0.25, 0.5, 0.15), ("square", "blue", 0.75, 0.5, 0.15))
    swapped = _image(("triangle", "red", 0.75, 0.5, 0.15), ("square", "blue", 0.25, 0.5, 0.15))
    stacked = _image(("triangle", "red", 0.5, 0.25, 0.15), ("square", "blue", 0.5, 0.75, 0.15))
    assert score_image(right, POSITION)
    assert explain(swapped, POSITION) == ["expected triangle left of target, found right of"]
    assert explain(stacked, POSITION) == ["expected triangle left of target, found above"]


def test_missing_target_fails_position():
    alone = _image(("triangle", "red", 0.25, 0.5, 0.15))
    assert explain(alone, POSITION) == ["expected square>=1, found 0", "no target for triangle to be left of"]


COLOR_ATTR = {
    "tag": "color_attr", "prompt": "a photo of a red circle and a blue square",
    "include": [{"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "blue"}],
}


def test_colour_is_checked_per_object():
    right = _image(("circle", "red", 0.25, 0.3, 0.15), ("square", "blue", 0.7, 0.7, 0.15))
    swapped = _image(("circle", "blue", 0.25, 0.3, 0.15), ("square", "red", 0.7, 0.7, 0.15))
    wrong = _image(("circle", "orange", 0.25, 0.3, 0.15), ("square", "blue", 0.7, 0.7, 0.15))
    assert score_image(right, COLOR_ATTR)
    assert len(explain(swapped, COLOR_ATTR)) == 2
    assert explain(wrong, COLOR_ATTR) == ["expected red circle>=1, found ['orange']"]


def test_summary_is_the_unweighted_mean_of_tags():
    results = [{"tag": "single_object", "correct": True}] * 3 + [{"tag": "counting", "correct": False}]
    assert summarize(results) == {"single_object": 1.0, "counting": 0.0, "overall": 0.5}
