"""The shapes detector finds every rendered object with its shape and colour, even blurred."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from harness.data.shapes import ShapesWorld, render
from harness.geneval.detector import detect


def _degrade(image: np.ndarray, rng: np.random.Generator, sigma: float, noise: float) -> np.ndarray:
    """Roughly what a small generator's samples look like: soft edges, grain, a colour cast."""
    x = ndimage.gaussian_filter(image.astype(np.float32), (sigma, sigma, 0))
    x = x + rng.normal(0, noise, x.shape) + rng.uniform(-15, 15, 3)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _accuracy(n: int, resolution: int, sigma: float = 0.0, noise: float = 0.0) -> dict[str, float]:
    ds, rng = ShapesWorld("test", n, resolution=resolution), np.random.default_rng(0)
    found = shape_ok = color_ok = extra = total = 0
    for i in range(n):
        scene = ds.scene(i)
        image = render(scene, resolution)
        if sigma or noise:
            image = _degrade(image, rng, sigma, noise)
        dets = detect(image)
        for o in scene.objects:
            total += 1
            hit = [d for d in dets if abs(d.cx - o.cx) < o.size and abs(d.cy - o.cy) < o.size]
            if hit:
                found += 1
                shape_ok += hit[0].shape == o.shape
                color_ok += hit[0].color == o.color
        extra += max(0, len(dets) - len(scene.objects))
    return {"recall": found / total, "shape": shape_ok / found, "color": color_ok / found, "extra": extra / n}


@pytest.mark.parametrize("resolution", [32, 64])
def test_renders_are_detected_exactly(resolution):
    acc = _accuracy(150, resolution)
    assert acc == {"recall": 1.0, "shape": 1.0, "color": 1.0, "extra": 0.0}


def test_blurred_noisy_renders_are_still_detected():
    acc = _accuracy(150, 32, sigma=0.8, noise=8)
    assert acc["recall"] >= 0.99 and acc["shape"] >= 0.97 and acc["color"] >= 0.99 and acc["extra"] <= 0.01, acc


def test_position_and_size_of_detections_match_the_scene():
    ds = ShapesWorld("val", 40)
    for i in range(len(ds)):
        scene = ds.scene(i)
        dets = detect(ds.image(i))
        for o in scene.objects:
            d = min(dets, key=lambda d: (d.cx - o.cx) ** 2 + (d.cy - o.cy) ** 2)
            assert abs(d.cx - o.cx) < 0.03 and abs(d.cy - o.cy) < 0.03
            assert abs((d.bbox[2] - d.bbox[0]) / 32 - 2 * o.size) < 0.06


def test_blank_and_noise_images_have_no_detections():
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert detect(np.full((32, 32, 3), rng.integers(0, 256), np.uint8)) == []
        assert detect(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) == []


def test_rejects_non_square_images():
    with pytest.raises(ValueError, match="square"):
        detect(np.zeros((32, 16, 3), np.uint8))
