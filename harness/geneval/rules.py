"""GenEval's scoring rules on top of the shapes detector.

An image is correct when every ``include`` group is met and no ``exclude`` group is:
  * include {class, count}: at least ``count`` detections of the class; the ``count`` best-scoring
    of them are the group's objects (GenEval keeps the most confident ones).
  * "color": at least ``count`` of the group's objects have that colour.
  * "position": [relation, index]: each of the group's objects stands in ``relation`` to each
    object of the (met) include group at ``index``, by GenEval's rule (``shapes.relations``: centre
    offsets shrunk by 0.1 x the summed box sizes, then the direction must dominate).
  * exclude {class, count}: fails when ``count`` or more of the class are detected; GenEval's
    counting prompts exclude count + 1, which makes the count exact.
A tag's score is the mean over its images; "overall" is the unweighted mean of the tag scores.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from harness.data.shapes import relations
from harness.errors import UserError
from harness.geneval.detector import Detection, detect
from harness.registry import GENEVAL_TAGS


def explain(image: np.ndarray, metadata: dict, detections: list[Detection] | None = None) -> list[str]:
    """Why the image fails its prompt; an empty list means it is correct."""
    found = detect(image) if detections is None else detections
    by_class: dict[str, list[Detection]] = {}
    for d in sorted(found, key=lambda d: -d.score):
        by_class.setdefault(d.shape, []).append(d)
    reasons: list[str] = []
    groups: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        name, count = req["class"], int(req["count"])
        objs = by_class.get(name, [])[:count]
        ok = len(objs) >= count
        if not ok:
            reasons.append(f"expected {name}>={count}, found {len(objs)}")
        if ok and "color" in req:
            colors = [d.color for d in objs]
            if colors.count(req["color"]) < count:
                ok = False
                reasons.append(f"expected {req['color']} {name}>={count}, found {colors}")
        if ok and "position" in req:
            rel, target = req["position"]
            anchors = groups[target] if target < len(groups) else None
            if anchors is None:
                ok = False
                reasons.append(f"no target for {name} to be {rel}")
            else:
                for obj in objs:
                    bad = next((a for a in anchors if rel not in relations(obj.bbox, a.bbox)), None)
                    if bad is not None:
                        ok = False
                        got = sorted(relations(obj.bbox, bad.bbox)) or ["nowhere in particular"]
                        reasons.append(f"expected {name} {rel} target, found {' and '.join(got)}")
                        break
        groups.append(objs if ok else None)
    for req in metadata.get("exclude", []):
        name, count = req["class"], int(req["count"])
        if len(by_class.get(name, [])) >= count:
            reasons.append(f"expected {name}<{count}, found {len(by_class[name])}")
    return reasons


def score_image(image: np.ndarray, metadata: dict) -> bool:
    """Whether the image satisfies its GenEval prompt metadata."""
    return not explain(image, metadata)


def load_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def score_folder(folder: str | os.PathLike) -> list[dict]:
    """Score a GenEval-layout folder (``<index>/metadata.jsonl``, ``<index>/samples/*.png``):
    one result per image with its index, tag, prompt, file, ``correct`` and ``reason``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError("dir", f"not a directory: {folder}")
    results = []
    prompts = sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not prompts:
        raise UserError("dir", f"no prompt folders (all-digit names) in {folder}")
    for prompt_dir in prompts:
        meta_path = prompt_dir / "metadata.jsonl"
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except FileNotFoundError:
            raise UserError(str(meta_path), "missing") from None
        except json.JSONDecodeError as e:
            raise UserError(str(meta_path), f"not JSON ({e.msg})") from None
        for png in sorted((prompt_dir / "samples").glob("*.png")):
            reasons = explain(load_png(png), meta)
            results.append({
                "index": int(prompt_dir.name),
                "tag": meta.get("tag"),
                "prompt": meta.get("prompt"),
                "filename": str(png.relative_to(folder)),
                "correct": not reasons,
                "reason": "; ".join(reasons),
            })
    return results


def summarize(results: list[dict]) -> dict[str, float]:
    """Per-tag accuracy (mean over its images) and "overall" (unweighted mean over tags present)."""
    summary: dict[str, float] = {}
    for tag in GENEVAL_TAGS:
        hits = [bool(r["correct"]) for r in results if r["tag"] == tag]
        if hits:
            summary[tag] = float(np.mean(hits))
    summary["overall"] = float(np.mean(list(summary.values()))) if summary else 0.0
    return summary
