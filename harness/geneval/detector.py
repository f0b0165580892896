"""A rule-based object detector for the shapes world: GenEval's Mask2Former + CLIP, for flat shapes.

1. Background: the median of the low-saturation pixels (the world's backgrounds are greyish).
2. Colour: each pixel is explained as a blend ``background + alpha * (colour - background)`` for
   every palette colour; a pixel is foreground when some colour explains it with alpha >= 0.5 and a
   small residual (the one with the smallest residual wins). This keeps anti-aliased and blurred
   edges with their object instead of turning them into specks of a darker colour.
3. Objects: 8-connected components of the foreground (scipy.ndimage.label), too-small ones dropped;
   a component's colour is the majority label of its pixels.
4. Shape: for each shape, the soft coverage map (alphas of the component's colour) fixes the shape's
   size by its area and its centre by its centroid; the shape whose ideal anti-aliased rendering
   overlaps the map best (soft IoU) wins, and that IoU is the detection's score. Blobs that fit no
   shape (noise, merged objects) score low and are dropped.
Area and centroid are preserved by blur, so the fit is robust to the softness of generated images.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from harness.data.shapes import COLORS, SHAPES, ShapeObject, coverage

MAX_RESIDUAL = 60.0  # RGB distance from the background->colour line still called that colour
BACKGROUND_CHROMA = 40.0  # max(R,G,B) - min(R,G,B) below this may be background
MIN_AREA = 0.01  # covered fraction of the image; the world's smallest triangle covers 0.02
MIN_SCORE = 0.65  # soft IoU with the best-fitting ideal shape (renders: >0.8 even blurred)
BLUR_SIGMAS = (0.0, 0.5, 1.0, 1.5)  # per 32 pixels: generated images are softer than renders
RIM = 2  # pixels around a blob that may hold its soft edge, per 32 pixels

_PALETTE = np.asarray(list(COLORS.values()), np.float32)
_NAMES = list(COLORS)


@dataclass(frozen=True)
class Detection:
    shape: str
    color: str
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels (sub-pixel, of the fitted shape)
    cx: float  # centre of the bbox in [0, 1] image units
    cy: float
    area: float  # covered pixels (sum of soft coverage)
    score: float  # soft IoU of the fitted ideal shape; detections are ranked by it (GenEval's confidence)


def estimate_background(image: np.ndarray) -> np.ndarray:
    """RGB of the background: median of low-saturation pixels (of all pixels if there are few)."""
    pixels = image.reshape(-1, 3).astype(np.float32)
    chroma = pixels.max(axis=1) - pixels.min(axis=1)
    grey = pixels[chroma < BACKGROUND_CHROMA]
    return np.median(grey if len(grey) >= 0.1 * len(pixels) else pixels, axis=0)


def palette_fit(image: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, residual), each (K, H, W): every pixel as background + alpha * (colour_k - background)."""
    p = image.astype(np.float32) - background
    d = _PALETTE - background  # (K, 3)
    alpha = np.einsum("hwc,kc->khw", p, d) / np.maximum((d**2).sum(axis=1), 1.0)[:, None, None]
    clipped = np.clip(alpha, 0.0, 1.0)
    residual = np.linalg.norm(p[None] - clipped[..., None] * d[:, None, None, :], axis=-1)
    return alpha, residual


def _fit(
    shape: str, alpha: np.ndarray, region: np.ndarray, area: float, cx: float, cy: float
) -> tuple[ShapeObject, float]:
    """The ideal ``shape`` with the blob's area and centroid (pixel units), and its best soft IoU
    with the blob over ``region``, trying a few blur widths to match the blob's softness."""
    res = alpha.shape[0]
    half = {"circle": np.sqrt(area / np.pi), "square": np.sqrt(area) / 2, "triangle": np.sqrt(area / 2)}[shape]
    if shape == "triangle":  # the centroid lies a third of the half-height below the box centre
        cy -= half / 3
    obj = ShapeObject(shape, "", cx / res, cy / res, half / res)
    ideal = coverage(obj, res)
    best = 0.0
    for sigma in BLUR_SIGMAS:
        template = np.where(region, ndimage.gaussian_filter(ideal, sigma * res / 32) if sigma else ideal, 0.0)
        union = np.maximum(alpha, template).sum()
        if union > 0:
            best = max(best, float(np.minimum(alpha, template).sum() / union))
    return obj, best


def detect(image: np.ndarray, min_area: float = MIN_AREA, min_score: float = MIN_SCORE) -> list[Detection]:
    """Shapes in a uint8 (H, W, 3) square image, best score first."""
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"expected a square (H, W, 3) image, got shape {image.shape}")
    res = image.shape[0]
    alpha, residual = palette_fit(image, estimate_background(image))
    cost = np.where((alpha >= 0.5) & (residual < MAX_RESIDUAL), residual, np.inf)
    label = cost.argmin(axis=0)
    components, n = ndimage.label(np.isfinite(cost.min(axis=0)), structure=np.ones((3, 3)))
    found = []
    for k, window in enumerate(ndimage.find_objects(components), start=1):
        mask = components == k
        if mask.sum() < min_area * res * res:  # cheap early exit; the soft area decides below
            continue
        color = int(np.bincount(label[mask], minlength=len(_NAMES)).argmax())
        # the blob and its rim (where soft edges live), minus other blobs
        rim = max(1, round(RIM * res / 32))
        region = ndimage.binary_dilation(mask, np.ones((3, 3)), iterations=rim) & ((components == 0) | mask)
        region &= residual[color] < MAX_RESIDUAL
        soft = np.where(region, np.clip(alpha[color], 0.0, 1.0), 0.0)
        area = float(soft.sum())
        if area < min_area * res * res:
            continue
        ys, xs = np.indices(soft.shape) + 0.5
        cx, cy = float((soft * xs).sum() / area), float((soft * ys).sum() / area)
        fits = [_fit(shape, soft, region, area, cx, cy) for shape in SHAPES]
        obj, score = max(fits, key=lambda f: f[1])
        if score < min_score:
            continue
        x0, y0, x1, y1 = (v * res for v in obj.box())
        found.append(
            Detection(obj.shape, _NAMES[color], (x0, y0, x1, y1), obj.cx, obj.cy, area, score)
        )
    return sorted(found, key=lambda d: -d.score)
