"""The "shapes world": procedural text-to-image pairs whose captions a rule-based GenEval can check.

Each example is a small scene of 1..4 flat shapes (circle, square, upright triangle) in six
saturated colours on a dark, low-saturation background, with a caption that is exactly true of the
image in the sense GenEval checks it. Nothing is stored: the scene for (seed, split, index) is drawn
from ``np.random.default_rng([seed, split_id, index])``, so it does not depend on dataset size or
iteration order, and pixels come from :func:`render` (4x supersampled, box-filtered).

Captions cover GenEval's six tags, uniformly, with paraphrases:
  single_object  "a photo of a circle", "a circle", "one circle", ...
  two_object     "a circle and a square"              (two different shapes)
  counting       "three triangles"                    (exactly that many, nothing else)
  colors         "a red circle", "a circle that is red"
  position       "a circle to the left of a square"   (GenEval's relation rule holds with margin)
  color_attr     "a red circle and a blue square"     (different shapes, different colours)
A scene contains only the objects its caption names, so captions are complete for counting.
Object order in ``Scene.objects`` follows GenEval's include groups: caption order, except for
position where ``objects[0]`` is the reference ("... of a square") and ``objects[1]`` the subject.

Compositional hold-out (GenEval is zero-shot, so is this split). A fixed, seed-independent ~20% of
two-object combinations is held out; every shape, colour and (colour, shape) pair is still seen:
  colour pairs    unordered {(colour, shape), (colour', shape')} with different shapes and colours
                  (18 of 90)
  arrangements    (axis, first shape, second shape): "circle left of square" is the same picture as
                  "square right of circle"; at most one direction of a shape pair per axis (2 of 12)
  counts          (shape, n) for n in 2..4 (2 of 9)
A scene is held out (:func:`is_held_out`) when its objects show any held-out combination, whatever
its caption says: with ``held_out="picture"`` (the default) train/val/test reject such scenes (so no
incidental leak through e.g. a two_object scene); with ``held_out="caption"`` they reject only
scenes whose caption names one (:func:`names_held_out`), so a held-out arrangement may be pictured
under "a square and a circle" but is never named, as in real data, where GenEval's prompts are
novel sentences about pictures of a kind the model has seen. "compositional" draws
counting/position/color_attr captions only from held-out combinations, in either mode.
single_object, two_object and colors have no two-object combination to hold out; "compositional"
gives fresh, non-held-out samples for them (its own split id, so new scenes).

Named scenes (the long tail; off unless ``named_scenes`` > 0, grid layout only). Kind k of K is a
fixed arrangement of 5..10 objects of one shape in chosen cells and colours, the same in every
split and seed, captioned by its own made-up name ("a photo of a zuvodi"); a scene is named with
probability ``named_fraction``, its kind drawn with P(k) ∝ (k + 1)^-``named_zipf``. Knowing a kind
is one quantum in the sense of Michaud et al. (2023): a model that can hold more of them learns
more of the tail, so the loss keeps falling with size, at a rate set by the Zipf exponent. A named
scene holds one shape only and more objects than any count caption, so it shows no held-out
combination; the "compositional" split never draws one.
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from harness.errors import UserError, check_choice
from harness.registry import (GENEVAL_TAGS, HELD_OUT_TAGS, HOLD_OUTS, LAYOUTS, NUISANCES, PALETTE,
                              UNNAMED_COLORS)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = dict(zip(PALETTE, [
    (225, 35, 35), (40, 190, 60), (40, 90, 235), (240, 220, 40), (160, 60, 215), (250, 140, 25)]))
# An unnamed object's colour under unnamed_color="by_shape": a fixed colour per shape, so no colour
# is left to chance, while the palette stays in use (colour words and named scenes use all of it)
SHAPE_COLORS: dict[str, str] = dict(zip(SHAPES, PALETTE))
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
SPLITS: tuple[str, ...] = ("train", "val", "test", "compositional")
MAX_OBJECTS = 4

POSITION_THRESHOLD = 0.1  # GenEval's: centre offsets are reduced by 0.1 x (sum of box sizes)
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
PLURALS = {s: s + "s" for s in SHAPES}
PREFIXES = ("a photo of ", "", "a picture of ", "an image of ")  # the first is GenEval's wording
RELATION_PHRASES = {
    "left of": ("left of", "to the left of"),
    "right of": ("right of", "to the right of"),
    "above": ("above", "on top of"),
    "below": ("below", "beneath"),
}
HELD_OUT_FRACTION = 0.2

_MIN_SIZE, _MAX_SIZE = 0.1, 0.2  # half-extent: >= 6.4 px across at 32x32
_MAX_SIZE_CROWDED = 0.16  # for 3-4 objects
_GAP = 0.07  # free space between bounding boxes, so blurry objects do not merge
# Nuisance: what a scene carries that no caption names (NUISANCES, harness.registry). "full": a
# random dark grey background with a tint
# and a gradient, objects of random size, jittered in their cells. "none": one plain background and
# objects of one size, centred in their cells (grid): what is left is what captions name, plus the
# cells and any colour a caption leaves open. The same random draws are made either way, so a scene
# index shows the same objects in the same cells in both worlds.
_PLAIN_BACKGROUND = (62, 62, 62)  # the mean of the "full" world's background grey
# Unnamed colour: the colour of an object whose caption names none (tags other than COLOR_TAGS).
# "random" draws any of the six; a palette colour paints every such object in it (UNNAMED_COLORS,
# harness.registry). With random unnamed colours a continuous-token model left named colours
# unbound (calibration item 22 in docs/results/cpu-study).
COLOR_TAGS = ("colors", "color_attr")
# "grid" layout (LAYOUTS, harness.registry): each object centred (small jitter) in its own cell of a cells x cells grid and as
# large as the cell allows; neighbouring cells keep >= _GRID_GAP of background between objects.
# With cells = resolution / tokenizer downsample an object is one token: a world a small model
# learns to draw in minutes, used by the default CPU study.
_GRID_SIZE = (0.72, 0.84)  # half-extent as a fraction of the cell's half-width
_GRID_GAP = 0.05
_EDGE = 0.02  # free space to the image border
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeObject:
    """One flat shape. Coordinates are in [0, 1] image units, x to the right, y down."""

    shape: str
    color: str
    cx: float
    cy: float
    size: float  # half-extent: circle radius, half the square side, half the triangle base/height

    def box(self) -> tuple[float, float, float, float]:
        """Bounding box in [0, 1] units: x0, y0, x1, y1."""
        return (self.cx - self.size, self.cy - self.size, self.cx + self.size, self.cy + self.size)

    def bbox(self, resolution: int) -> tuple[int, int, int, int]:
        """Pixel bounding box x0, y0, x1, y1 (x1, y1 exclusive, numpy-slice style), clipped."""
        x0, y0, x1, y1 = (v * resolution for v in self.box())
        clip = lambda v: int(min(max(v, 0), resolution))  # noqa: E731
        return clip(np.floor(x0)), clip(np.floor(y0)), clip(np.ceil(x1)), clip(np.ceil(y1))


@dataclass
class Scene:
    objects: list[ShapeObject]
    background: tuple[int, int, int]
    tag: str
    caption: str
    gradient: tuple[float, float] = (0.0, 0.0)  # background brightness change across x, y (0..255)

    def metadata(self, resolution: int) -> dict:
        """GenEval-schema prompt metadata for this scene, plus the ground-truth objects."""
        meta = {"tag": self.tag, "prompt": self.caption, "include": include_groups(self)}
        if self.tag == "counting":
            meta["exclude"] = [{"class": self.objects[0].shape, "count": len(self.objects) + 1}]
        meta["objects"] = [
            {"class": o.shape, "color": o.color, "bbox": list(o.bbox(resolution))} for o in self.objects
        ]
        meta["background"] = list(self.background)
        return meta


def relations(box_a: tuple[float, ...], box_b: tuple[float, ...], threshold: float = POSITION_THRESHOLD) -> set[str]:
    """GenEval's rule: where box A (x0, y0, x1, y1) lies relative to box B; any units.

    The centre offset is shrunk per axis by ``threshold`` x (size of A + size of B); a relation
    holds when the shrunk offset, over the length of the raw offset, exceeds 0.5 along that axis.
    """
    a, b = np.asarray(box_a[:4], float), np.asarray(box_b[:4], float)
    offset = (a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2
    dims = (a[2:] - a[:2]) + (b[2:] - b[:2])
    revised = np.maximum(np.abs(offset) - threshold * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    found = set()
    if dx < -0.5:
        found.add("left of")
    if dx > 0.5:
        found.add("right of")
    if dy < -0.5:
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found


def include_groups(scene: Scene) -> list[dict]:
    """GenEval ``include`` list for a scene built by this module (objects in include-group order)."""
    objs = scene.objects
    if scene.tag == "counting":
        return [{"class": objs[0].shape, "count": len(objs)}]
    if scene.tag == "position":
        rel = relations(objs[1].box(), objs[0].box())
        if len(rel) != 1:
            raise ValueError(f"position scene must show exactly one relation, shows {sorted(rel)}")
        return [
            {"class": objs[0].shape, "count": 1},
            {"class": objs[1].shape, "count": 1, "position": [rel.pop(), 0]},
        ]
    with_color = scene.tag in COLOR_TAGS
    return [
        {"class": o.shape, "count": 1, **({"color": o.color} if with_color else {})} for o in objs
    ]


# ---------------------------------------------------------------- compositional hold-out


def _canonical(item):
    """A set-free form of ``item`` whose repr does not depend on the process's string hashing
    (a frozenset's repr follows its iteration order, which PYTHONHASHSEED changes)."""
    if isinstance(item, (set, frozenset)):
        return tuple(sorted(_canonical(x) for x in item))
    if isinstance(item, tuple):
        return tuple(_canonical(x) for x in item)
    return item


def _stable_order(items: list) -> list:
    """Items sorted by a hash of their canonical repr: a fixed pseudo-random order, the same in
    every process on every machine."""
    return sorted(items, key=lambda it: hashlib.sha256(repr(_canonical(it)).encode()).hexdigest())


def _pick(candidates: list, n: int, allowed) -> frozenset:
    chosen: list = []
    for item in _stable_order(candidates):
        if len(chosen) < n and allowed(chosen + [item]):
            chosen.append(item)
    return frozenset(chosen)


@lru_cache(maxsize=None)
def held_out_combinations() -> dict[str, frozenset]:
    """The fixed held-out sets: "color_pairs", "arrangements" and "counts" (see module docstring)."""
    items = [(c, s) for s in SHAPES for c in COLORS]
    pairs = [
        frozenset(p) for p in itertools.combinations(items, 2) if p[0][0] != p[1][0] and p[0][1] != p[1][1]
    ]
    arrangements = [(axis, a, b) for axis in ("x", "y") for a, b in itertools.permutations(SHAPES, 2)]
    counts = [(s, n) for s in SHAPES for n in range(2, MAX_OBJECTS + 1)]

    def pairs_ok(chosen):  # every (colour, shape) item keeps most of its partners
        return all(sum(it in p for p in chosen) <= 4 for it in items)

    def arrangements_ok(chosen):  # never both directions of one shape pair on one axis
        keys = [(axis, frozenset((a, b))) for axis, a, b in chosen]
        return len(keys) == len(set(keys))

    def counts_ok(chosen):  # every shape and every number stays seen
        return len({s for s, _ in chosen}) == len(chosen) and len({n for _, n in chosen}) == len(chosen)

    size = lambda xs: max(1, round(HELD_OUT_FRACTION * len(xs)))  # noqa: E731
    return {
        "color_pairs": _pick(pairs, size(pairs), pairs_ok),
        "arrangements": _pick(arrangements, size(arrangements), arrangements_ok),
        "counts": _pick(counts, size(counts), counts_ok),
    }


_SUBJECT_FIRST = {"left of": True, "right of": False, "above": True, "below": False}  # left/top first


def names_held_out(tag: str, include: list[dict]) -> bool | None:
    """Whether a caption of ``tag`` with GenEval ``include`` groups names a held-out combination;
    None for tags that name none."""
    held = held_out_combinations()
    if tag == "counting":
        return (include[0]["class"], include[0]["count"]) in held["counts"]
    if tag == "position":
        reference, subject = include[0]["class"], include[1]["class"]
        rel = include[1]["position"][0]
        axis = "x" if rel in ("left of", "right of") else "y"
        first, second = (subject, reference) if _SUBJECT_FIRST[rel] else (reference, subject)
        return (axis, first, second) in held["arrangements"]
    if tag == "color_attr":
        a, b = include
        return frozenset([(a["color"], a["class"]), (b["color"], b["class"])]) in held["color_pairs"]
    return None


def _arrangement(a: ShapeObject, b: ShapeObject) -> set[tuple[str, str, str]]:
    rel = relations(a.box(), b.box())
    out = set()
    if "left of" in rel:
        out.add(("x", a.shape, b.shape))
    if "right of" in rel:
        out.add(("x", b.shape, a.shape))
    if "above" in rel:
        out.add(("y", a.shape, b.shape))
    if "below" in rel:
        out.add(("y", b.shape, a.shape))
    return out


def is_held_out(scene: Scene) -> bool:
    """Whether the scene shows any held-out combination (colour pair, arrangement or count)."""
    held = held_out_combinations()
    by_shape: dict[str, int] = {}
    for o in scene.objects:
        by_shape[o.shape] = by_shape.get(o.shape, 0) + 1
    if any((s, n) in held["counts"] for s, n in by_shape.items()):
        return True
    for a, b in itertools.combinations(scene.objects, 2):
        if a.shape == b.shape:
            continue
        if a.color != b.color and frozenset([(a.color, a.shape), (b.color, b.shape)]) in held["color_pairs"]:
            return True
        if _arrangement(a, b) & held["arrangements"]:
            return True
    return False


# ---------------------------------------------------------------- captions


def _noun(shape: str, color: str | None = None) -> str:
    words = f"{color} {shape}" if color else shape
    return ("an " if words[0] in "aeiou" else "a ") + words


def caption_of(tag: str, include: list[dict], rng: np.random.Generator | None = None) -> str:
    """Caption for GenEval include groups; ``rng`` picks a paraphrase, None gives GenEval's wording
    ("a photo of ..."). Position groups are [reference, subject with "position": [rel, 0]]."""
    pick = (lambda options: options[0]) if rng is None else (lambda options: options[rng.integers(len(options))])
    prefix = pick(PREFIXES)
    first = include[0]
    if tag == "single_object":
        return pick([prefix + _noun(first["class"]), f"one {first['class']}"])
    if tag == "two_object":
        return prefix + f"{_noun(first['class'])} and {_noun(include[1]['class'])}"
    if tag == "counting":
        return prefix + f"{COUNT_WORDS[first['count']]} {PLURALS[first['class']]}"
    if tag == "colors":
        return pick([prefix + _noun(first["class"], first["color"]), f"{_noun(first['class'])} that is {first['color']}"])
    if tag == "position":
        reference, subject = include
        rel = pick(RELATION_PHRASES[subject["position"][0]])
        return prefix + f"{_noun(subject['class'])} {rel} {_noun(reference['class'])}"
    if tag == "color_attr":
        a, b = include
        return prefix + f"{_noun(a['class'], a['color'])} and {_noun(b['class'], b['color'])}"
    raise ValueError(f"unknown tag {tag!r}")


def vocabulary(named_scenes: int = 0) -> list[str]:
    """Every word any caption can contain (lower-case, split on spaces), sorted; with the names of
    ``named_scenes`` named-scene kinds."""
    words = {"a", "an", "and", "one", "that", "is"}
    for phrase in [*PREFIXES, *itertools.chain(*RELATION_PHRASES.values())]:
        words.update(phrase.split())
    words.update(SHAPES, PLURALS.values(), COLORS, COUNT_WORDS.values())
    if named_scenes:
        words.update(named_scene_names(named_scenes))
    return sorted(words)


# ---------------------------------------------------------------- named scenes (the long tail)

NAMED_TAG = "named"
_NAMED_SEED = 7919  # the kinds are world knowledge: fixed, whatever data.seed
_NAMED_OBJECTS = (5, 10)  # objects per named scene, all of one shape (so never a held-out combination)
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"


@lru_cache(maxsize=None)
def named_scene_names(count: int) -> tuple[str, ...]:
    """The names of the first ``count`` kinds: made-up words of three consonant-vowel syllables,
    distinct from each other and from every other caption word; kind k's name does not depend on
    ``count``."""
    rng = np.random.default_rng(_NAMED_SEED)
    taken, names = set(vocabulary()), []
    while len(names) < count:
        name = "".join(_CONSONANTS[rng.integers(len(_CONSONANTS))] + _VOWELS[rng.integers(len(_VOWELS))]
                       for _ in range(3))
        if name not in taken:
            taken.add(name)
            names.append(name)
    return tuple(names)


@lru_cache(maxsize=None)
def named_scene_objects(kind: int, cells: int, color: str = "random") -> tuple[ShapeObject, ...]:
    """Kind ``kind``'s objects on a ``cells`` x ``cells`` grid: one shape, 5..10 cells, a colour
    each (``color="random"``; "by_shape" paints them in ``SHAPE_COLORS[shape]``, a palette colour
    in it, the shape and cells unchanged), centred at the grid's mean object size."""
    rng = np.random.default_rng([_NAMED_SEED, kind])
    shape = SHAPES[rng.integers(len(SHAPES))]
    n = min(int(rng.integers(_NAMED_OBJECTS[0], _NAMED_OBJECTS[1] + 1)), cells * cells)
    chosen = sorted(int(c) for c in rng.choice(cells * cells, size=n, replace=False))
    colors = [_unnamed(shape, list(COLORS)[i], color) for i in rng.integers(len(COLORS), size=n)]
    half = 0.5 / cells
    return tuple(ShapeObject(shape, color, (2 * (cell % cells) + 1) * half, (2 * (cell // cells) + 1) * half,
                             half * sum(_GRID_SIZE) / 2) for cell, color in zip(chosen, colors))


@lru_cache(maxsize=None)
def named_scene_probabilities(count: int, zipf: float) -> np.ndarray:
    """P(kind k) ∝ (k + 1)^-zipf over ``count`` kinds."""
    p = np.arange(1, count + 1, dtype=np.float64) ** -zipf
    return p / p.sum()


def named_scene(kind: int, count: int, cells: int, prefix: str = PREFIXES[0],
                background: tuple[int, int, int] = _PLAIN_BACKGROUND,
                gradient: tuple[float, float] = (0.0, 0.0), color: str = "random") -> Scene:
    """Kind ``kind`` (of ``count``) as a scene; by default its one picture, on the plain background,
    captioned in GenEval's wording ("a photo of a ...")."""
    caption = prefix + _noun(named_scene_names(count)[kind])
    return Scene(list(named_scene_objects(kind, cells, color)), background, NAMED_TAG, caption, gradient)


def _named_scene(rng: np.random.Generator, named: "NamedScenes", cells: int, nuisance: str) -> Scene:
    kind = int(rng.choice(named.count, p=named_scene_probabilities(named.count, named.zipf)))
    background, gradient = _background(rng, nuisance)
    return named_scene(kind, named.count, cells, PREFIXES[rng.integers(len(PREFIXES))], background, gradient,
                       named.color)


@dataclass(frozen=True)
class NamedScenes:
    """The long tail (see the module docstring): ``count`` kinds, Zipf exponent, share of scenes."""

    count: int = 0
    zipf: float = 1.5
    fraction: float = 0.5
    color: str = "random"  # the kinds' objects: each its own colour, or all in this palette colour


# ---------------------------------------------------------------- scene sampling


def _background(rng: np.random.Generator, nuisance: str = "full"
                ) -> tuple[tuple[int, int, int], tuple[float, float]]:
    grey = rng.uniform(25, 100)
    tint = rng.uniform(-8, 8, size=3)
    color = tuple(int(round(v)) for v in np.clip(grey + tint, 0, 255))
    gradient = tuple(float(v) for v in rng.uniform(-14, 14, size=2))
    if nuisance == "none":
        return _PLAIN_BACKGROUND, (0.0, 0.0)
    return color, gradient


def _separated(a: ShapeObject, b: ShapeObject, gap: float = _GAP) -> bool:
    ax0, ay0, ax1, ay1 = a.box()
    bx0, by0, bx1, by1 = b.box()
    return ax1 + gap <= bx0 or bx1 + gap <= ax0 or ay1 + gap <= by0 or by1 + gap <= ay0


def _clear_relation(subject: ShapeObject, reference: ShapeObject, rel: str, gap: float = _GAP) -> bool:
    """``rel`` holds with a margin: boxes apart along its axis, little offset across it."""
    dx, dy = subject.cx - reference.cx, subject.cy - reference.cy
    along, across = (dx, dy) if rel in ("left of", "right of") else (dy, dx)
    sign = -1 if rel in ("left of", "above") else 1
    return (
        sign * along >= subject.size + reference.size + gap
        and abs(across) <= 0.4 * abs(along)
        and relations(subject.box(), reference.box()) == {rel}
    )


def _place(
    specs: list[tuple[str, str]],
    rng: np.random.Generator,
    constraints: list[tuple[int, str, int]] = (),
    tries: int = 400,
    layout: str = "free",
    cells: int = 4,
    nuisance: str = "full",
) -> list[ShapeObject] | None:
    """Random non-overlapping layout for (shape, colour) specs; ``constraints`` are
    (subject index, relation, reference index). None if no layout was found in ``tries``.
    ``layout="grid"``: one object per cell of a ``cells`` x ``cells`` grid (see ``LAYOUTS``)."""
    max_size = _MAX_SIZE if len(specs) <= 2 else _MAX_SIZE_CROWDED
    for _ in range(tries):
        if layout == "grid":
            objs = grid_objects(specs, rng.choice(cells * cells, size=len(specs), replace=False), rng, cells)
        else:
            objs = []
            for shape, color in specs:
                size = rng.uniform(_MIN_SIZE, max_size)
                lo, hi = size + _EDGE, 1 - size - _EDGE
                objs.append(ShapeObject(shape, color, float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)), float(size)))
        placed = layout_holds(objs, constraints, layout, cells, nuisance)
        if placed is not None:
            return placed
    return None


def grid_objects(specs: list[tuple[str, str]], chosen, rng: np.random.Generator, cells: int = 4
                 ) -> list[ShapeObject]:
    """The grid layout's objects for (shape, colour) specs in the ``chosen`` cells (row-major
    indices), each drawn at a random size and jittered within its cell."""
    half = 0.5 / cells
    objs = []
    for (shape, color), cell in zip(specs, chosen):
        size = half * rng.uniform(*_GRID_SIZE)
        jitter = max(0.0, half - size - _GRID_GAP / 2)
        cx = (2 * (cell % cells) + 1) * half + rng.uniform(-jitter, jitter)
        cy = (2 * (cell // cells) + 1) * half + rng.uniform(-jitter, jitter)
        objs.append(ShapeObject(shape, color, float(cx), float(cy), float(size)))
    return objs


def grid_cell(obj: ShapeObject, cells: int = 4) -> int:
    """The grid cell (row-major index) that holds ``obj``'s centre."""
    return min(int(obj.cy * cells), cells - 1) * cells + min(int(obj.cx * cells), cells - 1)


def layout_holds(objs: list[ShapeObject], constraints: list[tuple[int, str, int]] = (),
                 layout: str = "free", cells: int = 4, nuisance: str = "full") -> list[ShapeObject] | None:
    """The layout a scene keeps if ``objs`` are apart and satisfy ``constraints``, else None:
    without nuisance the objects at one size (``_without_nuisance``) must hold too, and are kept,
    so both worlds make the same draws."""
    max_size = _MAX_SIZE if len(objs) <= 2 else _MAX_SIZE_CROWDED
    gap = _GRID_GAP if layout == "grid" else _GAP
    for layout_ in ([objs, _without_nuisance(objs, layout, cells, max_size)]
                    if nuisance == "none" else [objs]):
        if not (all(_separated(a, b, gap) for a, b in itertools.combinations(layout_, 2))
                and all(_clear_relation(layout_[s], layout_[r], rel, gap) for s, rel, r in constraints)):
            return None
    return layout_


def _without_nuisance(objs: list[ShapeObject], layout: str, cells: int, max_size: float
                      ) -> list[ShapeObject]:
    """The objects at one size: the grid's mean size at their cells' centres, or (free layout)
    the mean size where they are."""
    if layout != "grid":
        return [ShapeObject(o.shape, o.color, o.cx, o.cy, (_MIN_SIZE + max_size) / 2) for o in objs]
    half = 0.5 / cells
    return [ShapeObject(o.shape, o.color, (2 * int(o.cx * cells) + 1) * half,
                        (2 * int(o.cy * cells) + 1) * half, half * sum(_GRID_SIZE) / 2) for o in objs]


def _specs_for_tag(tag: str, rng: np.random.Generator, held_out: bool):
    """(specs, constraints) for a random caption of ``tag``; ``held_out`` draws a held-out combination."""
    held = held_out_combinations()
    colors = list(COLORS)
    rand_color = lambda: colors[rng.integers(len(colors))]  # noqa: E731
    rand_shape = lambda: SHAPES[rng.integers(len(SHAPES))]  # noqa: E731
    if tag in ("single_object", "colors"):
        return [(rand_shape(), rand_color())], []
    if tag == "two_object":
        a, b = rng.choice(len(SHAPES), size=2, replace=False)
        return [(SHAPES[a], rand_color()), (SHAPES[b], rand_color())], []
    if tag == "counting":
        if held_out:
            pool = sorted(held["counts"])
            shape, n = pool[rng.integers(len(pool))]
        else:
            shape, n = rand_shape(), int(rng.integers(2, MAX_OBJECTS + 1))
        return [(shape, rand_color()) for _ in range(n)], []
    if tag == "position":
        if held_out:
            pool = sorted(held["arrangements"])
            axis, first, second = pool[rng.integers(len(pool))]
            # caption "first left of second" or "second right of first" (same picture)
            rel_first, rel_second = ("left of", "right of") if axis == "x" else ("above", "below")
            if rng.integers(2):
                subject, rel, reference = first, rel_first, second
            else:
                subject, rel, reference = second, rel_second, first
        else:
            a, b = rng.choice(len(SHAPES), size=2, replace=False)
            subject, reference, rel = SHAPES[a], SHAPES[b], RELATIONS[rng.integers(len(RELATIONS))]
        return [(reference, rand_color()), (subject, rand_color())], [(1, rel, 0)]
    if tag == "color_attr":
        if held_out:
            pool = sorted(tuple(sorted(p)) for p in held["color_pairs"])
            pair = list(pool[rng.integers(len(pool))])
            rng.shuffle(pair)
            return [(s, c) for c, s in pair], []
        a, b = rng.choice(len(SHAPES), size=2, replace=False)
        ca, cb = rng.choice(len(colors), size=2, replace=False)
        return [(SHAPES[a], colors[ca]), (SHAPES[b], colors[cb])], []
    raise ValueError(tag)


def _unnamed(shape: str, drawn: str, unnamed_color: str) -> str:
    """The colour of a ``shape`` whose caption names none: the drawn one, its shape's own
    (``SHAPE_COLORS``), or the configured one (the caller draws ``drawn`` whatever the setting)."""
    if unnamed_color == "random":
        return drawn
    return SHAPE_COLORS[shape] if unnamed_color == "by_shape" else unnamed_color


def sample_scene(rng: np.random.Generator, split: str = "train", tag: str | None = None,
                 layout: str = "free", cells: int = 4, nuisance: str = "full",
                 unnamed_color: str = "random", named: NamedScenes = NamedScenes(),
                 held_out: str = "picture") -> Scene:
    """A random scene for ``split`` (tag uniform unless given); held-out combinations only in
    "compositional" counting/position/color_attr, never elsewhere: with ``held_out="picture"`` no
    other scene shows one, with "caption" no other caption names one. With ``named.count`` kinds, a
    scene of a split other than "compositional" is a named scene with probability
    ``named.fraction`` (unless ``tag`` is given)."""
    check_choice("split", split, SPLITS)
    check_choice("held_out", held_out, HOLD_OUTS)
    if named.count and tag is None and split != "compositional" and rng.random() < named.fraction:
        return _named_scene(rng, named, cells, nuisance)
    tag = GENEVAL_TAGS[rng.integers(len(GENEVAL_TAGS))] if tag is None else tag
    check_choice("tag", tag, GENEVAL_TAGS)
    want_held_out = split == "compositional" and tag in HELD_OUT_TAGS
    while True:
        specs, constraints = _specs_for_tag(tag, rng, want_held_out)
        if tag not in COLOR_TAGS:
            specs = [(shape, _unnamed(shape, color, unnamed_color)) for shape, color in specs]
        objs = _place(specs, rng, constraints, layout=layout, cells=cells, nuisance=nuisance)
        if objs is None:
            continue
        background, gradient = _background(rng, nuisance)
        scene = Scene(objs, background, tag, "", gradient)
        if split_keeps(scene, split, held_out):
            scene.caption = caption_of(tag, include_groups(scene), rng)
            return scene


def split_keeps(scene: Scene, split: str, held_out: str = "picture") -> bool:
    """Whether ``split`` keeps a drawn scene (its objects placed, its caption not yet written): the
    "compositional" split only scenes that show a held-out combination, the others none (with
    ``held_out="caption"``: none whose caption would name one)."""
    if split == "compositional" or held_out == "picture":
        return is_held_out(scene) == (split == "compositional" and scene.tag in HELD_OUT_TAGS)
    return not names_held_out(scene.tag, include_groups(scene))


def scene_from_metadata(meta: dict, rng: np.random.Generator, layout: str = "free",
                        cells: int = 4, nuisance: str = "full", unnamed_color: str = "random") -> Scene:
    """A random scene satisfying a GenEval-schema prompt: each include group's count of its class
    (in its colour if given, else ``unnamed_color``), positions with margin, and nothing else."""
    specs: list[tuple[str, str]] = []
    starts: list[int] = []
    colors = list(COLORS)
    for group in meta["include"]:
        check_choice("include.class", group["class"], SHAPES)
        if "color" in group:
            check_choice("include.color", group["color"], COLORS)
        starts.append(len(specs))
        for _ in range(int(group["count"])):
            drawn = None if group.get("color") else colors[rng.integers(len(colors))]
            specs.append((group["class"],
                          group.get("color") or _unnamed(group["class"], drawn, unnamed_color)))
    if not 1 <= len(specs) <= MAX_OBJECTS:
        raise UserError("include", f"{len(specs)} objects; the shapes world holds 1..{MAX_OBJECTS}")
    constraints = []
    for g, group in enumerate(meta["include"]):
        if "position" in group:
            rel, target = group["position"]
            check_choice("include.position", rel, RELATIONS)
            tg = meta["include"][target]
            for s in range(starts[g], starts[g] + int(group["count"])):
                for r in range(starts[target], starts[target] + int(tg["count"])):
                    constraints.append((s, rel, r))
    objs = _place(specs, rng, constraints, tries=20_000, layout=layout, cells=cells, nuisance=nuisance)
    if objs is None:
        raise UserError("include", f"no layout found for {meta.get('prompt', meta['include'])!r}")
    background, gradient = _background(rng, nuisance)
    return Scene(objs, background, meta.get("tag", ""), meta.get("prompt", ""), gradient)


def redraw(scene: Scene, rng: np.random.Generator, layout: str = "free", cells: int = 4,
           nuisance: str = "full", unnamed_color: str = "random") -> Scene:
    """Another scene for ``scene``'s caption, what a generator that follows captions perfectly may
    draw for it: a named scene is its one picture (on a fresh background draw), any other scene
    is drawn afresh from what its caption says (``include_groups``, ``scene_from_metadata``)."""
    if scene.tag == NAMED_TAG:
        background, gradient = _background(rng, nuisance)
        return Scene(list(scene.objects), background, scene.tag, scene.caption, gradient)
    meta = {"tag": scene.tag, "prompt": scene.caption, "include": include_groups(scene)}
    return scene_from_metadata(meta, rng, layout=layout, cells=cells, nuisance=nuisance,
                               unnamed_color=unnamed_color)


# ---------------------------------------------------------------- rendering


def coverage(obj: ShapeObject, resolution: int, supersample: int = _SUPERSAMPLE) -> np.ndarray:
    """Fraction of each pixel of a (resolution x resolution) image that ``obj`` covers, in [0, 1]
    (measured on a ``supersample``-times finer grid of sample points, inside the object's box)."""
    out = np.zeros((resolution, resolution), np.float32)
    x0, y0, x1, y1 = obj.bbox(resolution)
    if x1 <= x0 or y1 <= y0:
        return out
    n = resolution * supersample
    xs = (np.arange(x0 * supersample, x1 * supersample) + 0.5) / n
    ys = (np.arange(y0 * supersample, y1 * supersample) + 0.5) / n
    dx, dy = xs[None, :] - obj.cx, ys[:, None] - obj.cy
    if obj.shape == "circle":
        inside = dx**2 + dy**2 <= obj.size**2
    elif obj.shape == "square":
        inside = (np.abs(dx) <= obj.size) & (np.abs(dy) <= obj.size)
    elif obj.shape == "triangle":  # apex up, base at the bottom of the box
        t = (dy + obj.size) / (2 * obj.size)  # 0 at the apex, 1 at the base
        inside = (t >= 0) & (t <= 1) & (np.abs(dx) <= obj.size * t)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")
    out[y0:y1, x0:x1] = inside.reshape(y1 - y0, supersample, x1 - x0, supersample).mean(axis=(1, 3))
    return out


def background_image(scene: Scene, resolution: int) -> np.ndarray:
    """float32 (H, W, 3) background: the base colour plus its mild linear gradient."""
    c = (np.arange(resolution) + 0.5) / resolution - 0.5
    gx, gy = scene.gradient
    shade = (gx * c[None, :] + gy * c[:, None]).astype(np.float32)
    return np.asarray(scene.background, np.float32)[None, None, :] + shade[..., None]


def render(scene: Scene, resolution: int) -> np.ndarray:
    """uint8 (H, W, 3) image: background, then each shape blended by its anti-aliased coverage."""
    img = background_image(scene, resolution)
    for o in scene.objects:
        alpha = coverage(o, resolution)[..., None].astype(np.float32)
        img = img * (1 - alpha) + np.asarray(COLORS[o.color], np.float32) * alpha
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- dataset


class ShapesWorld(torch.utils.data.Dataset):
    """``size`` procedurally generated (image, caption) pairs of one split."""

    def __init__(self, split: str, size: int, resolution: int = 32, seed: int = 0,
                 layout: str = "free", cells: int = 4, nuisance: str = "full",
                 unnamed_color: str = "random", named: NamedScenes = NamedScenes(),
                 held_out: str = "picture"):
        check_choice("split", split, SPLITS)
        check_choice("held_out", held_out, HOLD_OUTS)
        check_choice("layout", layout, LAYOUTS)
        check_choice("nuisance", nuisance, NUISANCES)
        check_choice("unnamed_color", unnamed_color, UNNAMED_COLORS)
        check_choice("named_scene_color", named.color, UNNAMED_COLORS)
        if layout == "grid" and not 2 <= cells <= resolution // 6:
            raise UserError("cells", f"must be in 2..{resolution // 6} at resolution {resolution}, got {cells}")
        if named.count and layout != "grid":
            raise UserError("named_scenes", f"named scenes need the grid layout, got layout={layout}")
        if size < 1:
            raise UserError("size", f"must be >= 1, got {size}")
        if resolution < 16:
            raise UserError("resolution", f"must be >= 16 so the smallest shapes stay visible, got {resolution}")
        self.split, self.size, self.resolution, self.seed = split, size, resolution, seed
        self.layout, self.cells, self.nuisance = layout, cells, nuisance
        self.unnamed_color, self.named, self.held_out = unnamed_color, named, held_out
        self._split_id = SPLITS.index(split)

    def __len__(self) -> int:
        return self.size

    def _index(self, i: int) -> int:
        if not -self.size <= i < self.size:
            raise IndexError(f"index {i} out of range for {self.size} examples")
        return i % self.size

    def scene(self, i: int) -> Scene:
        i = self._index(i)
        return sample_scene(np.random.default_rng([self.seed, self._split_id, i]), self.split,
                            layout=self.layout, cells=self.cells, nuisance=self.nuisance,
                            unnamed_color=self.unnamed_color, named=self.named, held_out=self.held_out)

    def image(self, i: int) -> np.ndarray:
        return render(self.scene(i), self.resolution)

    def redrawn(self, i: int, draw: int) -> np.ndarray:
        """Image of draw ``draw`` of another scene for example ``i``'s caption (``redraw``)."""
        # the scene itself is drawn from [seed, split, i]; a longer key is a stream of its own
        rng = np.random.default_rng([self.seed, self._split_id, self._index(i), draw, 1])
        return render(redraw(self.scene(i), rng, self.layout, self.cells, self.nuisance, self.unnamed_color),
                      self.resolution)

    def caption(self, i: int) -> str:
        return self.scene(i).caption

    def __getitem__(self, i) -> dict:
        i = self._index(int(i))
        scene = self.scene(i)
        pixels = render(scene, self.resolution).transpose(2, 0, 1).astype(np.float32, order="C") / 127.5 - 1.0
        return {"image": torch.from_numpy(pixels), "caption": scene.caption, "index": i}
