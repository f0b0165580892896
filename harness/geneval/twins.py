"""GenEval's two-object binding tags split by which of the two bindings of the prompt's words
training showed, and how many failed images drew the other binding.

A position or colour-attribution prompt has a twin with the same words bound the other way
(``prompts.twin``): "a square left of a circle" / "a circle left of a square", "a red circle and
a blue square" / "a blue circle and a red square". A model that reads the caption as a bag of
words cannot tell the two apart: where training showed only one of them, it draws that one
whichever is asked; where it showed both, it picks at chance; where neither, it draws the two
objects bound at chance. So the score on each kind of prompt tells binding by word order apart from
memorised pictures. Kinds: "both seen", "prompt only" (the twin is held out), "twin only" (the
prompt is held out and its twin was seen: every held-out arrangement, 10 of the 18 held-out
colour pairs), "neither" (both held out).

    python -m harness.geneval twins DIR     (DIR scored by ``python -m harness.geneval score``)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from harness.errors import UserError
from harness.geneval.prompts import is_held_out_prompt, twin
from harness.geneval.rules import load_png, score_image

TWIN_TAGS = ("position", "color_attr")
KINDS = {(False, False): "both seen", (False, True): "prompt only", (True, False): "twin only",
         (True, True): "neither"}  # (prompt held out, twin held out) -> which binding training showed


def split_by_twin(folder: str | os.PathLike) -> dict[str, dict[str, tuple[int, int, int]]]:
    """{tag: {kind: (correct, drew the twin, images)}} over the folder's position and
    colour-attribution prompts (kinds in the module docstring), from its ``scores.json``, prompt
    metadata and images."""
    folder = Path(folder)
    try:
        images = json.loads((folder / "scores.json").read_text())["images"]
    except FileNotFoundError:
        raise UserError("dir", f"no scores.json in {folder}: run `python -m harness.geneval score {folder}` first") from None
    out: dict[str, dict[str, list[int]]] = {}
    prompts: dict[int, tuple[dict, str]] = {}  # prompt index -> (its twin, its kind)
    for result in images:
        if result["tag"] not in TWIN_TAGS:
            continue
        if result["index"] not in prompts:
            meta = json.loads((folder / f"{result['index']:05d}" / "metadata.jsonl").read_text())
            other = twin(meta)
            prompts[result["index"]] = other, KINDS[bool(is_held_out_prompt(meta)), bool(is_held_out_prompt(other))]
        other, kind = prompts[result["index"]]
        counts = out.setdefault(result["tag"], {}).setdefault(kind, [0, 0, 0])
        counts[0] += bool(result["correct"])
        counts[1] += not result["correct"] and score_image(load_png(folder / result["filename"]), other)
        counts[2] += 1
    order = list(KINDS.values())
    return {tag: {kind: tuple(kinds[kind]) for kind in order if kind in kinds} for tag, kinds in out.items()}
