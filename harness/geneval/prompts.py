"""GenEval-schema prompts for the shapes world, and reading/writing prompt files (JSON lines).

``make_prompts`` enumerates every distinct prompt a tag allows in a split (e.g. "compositional"
position prompts are the held-out arrangements only), shuffles them with ``seed`` and cycles
through them to give ``n_per_tag`` per tag, so small tags repeat prompts evenly rather than by
chance (the shapes world has only 3 single-object prompts; GenEval's 553 are all distinct).
"""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np

from harness.data.shapes import (
    COLORS,
    MAX_OBJECTS,
    RELATIONS,
    SHAPES,
    SPLITS,
    caption_of,
    names_held_out,
)
from harness.errors import UserError, check_choice
from harness.io import write_text
from harness.registry import GENEVAL_TAGS


def is_held_out_prompt(meta: dict) -> bool | None:
    """Whether a shapes-world prompt names a held-out combination; None for tags that have none."""
    return names_held_out(meta["tag"], meta["include"])


def twin(meta: dict) -> dict | None:
    """The prompt with the same words bound the other way: position with subject and reference
    exchanged ("a square left of a circle" -> "a circle left of a square"), colour attribution
    with the colours exchanged; None for other tags. A bag-of-words reader cannot tell the two
    apart, so a held-out prompt whose twin was seen in training asks the model to override a
    picture it has learnt for these words."""
    include = meta["include"]
    if meta["tag"] == "position":
        reference, subject = include
        include = [{"class": subject["class"], "count": 1},
                   {"class": reference["class"], "count": 1, "position": list(subject["position"])}]
    elif meta["tag"] == "color_attr":
        a, b = include
        include = [{**a, "color": b["color"]}, {**b, "color": a["color"]}]
    else:
        return None
    return {"tag": meta["tag"], "include": include, "prompt": caption_of(meta["tag"], include)}


def all_includes(tag: str) -> list[dict]:
    """Every distinct GenEval prompt (tag, include, exclude) of ``tag`` in the shapes world."""
    one = lambda shape, **extra: {"class": shape, "count": 1, **extra}  # noqa: E731
    if tag == "single_object":
        groups = [[one(s)] for s in SHAPES]
    elif tag == "two_object":
        groups = [[one(a), one(b)] for a, b in itertools.permutations(SHAPES, 2)]
    elif tag == "counting":
        groups = [[{"class": s, "count": n}] for s in SHAPES for n in range(2, MAX_OBJECTS + 1)]
    elif tag == "colors":
        groups = [[one(s, color=c)] for s in SHAPES for c in COLORS]
    elif tag == "position":
        groups = [
            [one(ref), one(subj, position=[rel, 0])]
            for subj, ref in itertools.permutations(SHAPES, 2)
            for rel in RELATIONS
        ]
    elif tag == "color_attr":
        groups = [
            [one(a, color=ca), one(b, color=cb)]
            for a, b in itertools.permutations(SHAPES, 2)
            for ca, cb in itertools.permutations(COLORS, 2)
        ]
    else:
        raise ValueError(f"unknown tag {tag!r}")
    out = []
    for include in groups:
        meta = {"tag": tag, "include": include}
        if tag == "counting":
            meta["exclude"] = [{"class": include[0]["class"], "count": include[0]["count"] + 1}]
        meta["prompt"] = caption_of(tag, include)
        out.append(meta)
    return out


def make_prompts(n_per_tag: int, seed: int = 0, split: str = "compositional") -> list[dict]:
    """``n_per_tag`` GenEval-schema prompts per tag (tag order as in GENEVAL_TAGS) for ``split``:
    "compositional" uses only held-out combinations where a tag has them; other splits never do."""
    check_choice("split", split, SPLITS)
    if n_per_tag < 1:
        raise UserError("n_per_tag", f"must be >= 1, got {n_per_tag}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    prompts = []
    for tag in GENEVAL_TAGS:
        pool = [m for m in all_includes(tag) if is_held_out_prompt(m) in (None, split == "compositional")]
        order = rng.permutation(len(pool))
        prompts += [pool[order[i % len(pool)]] for i in range(n_per_tag)]
    return prompts


def validate(meta: object, where: str) -> dict:
    """Check one GenEval metadata object; ``where`` ("file:line") names it in the UserError."""
    if not isinstance(meta, dict):
        raise UserError(where, f"expected a JSON object, got {type(meta).__name__}")
    for key in ("tag", "prompt", "include"):
        if key not in meta:
            raise UserError(where, f"missing key {key!r}")
    if meta["tag"] not in GENEVAL_TAGS:
        raise UserError(f"{where}: tag", f"unknown value {meta['tag']!r}", GENEVAL_TAGS)
    if not isinstance(meta["prompt"], str):
        raise UserError(where, "'prompt' must be a string")
    for key in ("include", "exclude"):
        groups = meta.get(key, [])
        if not isinstance(groups, list) or (key == "include" and not groups):
            raise UserError(where, f"{key!r} must be a non-empty list" if key == "include" else f"{key!r} must be a list")
        for i, group in enumerate(groups):
            if not isinstance(group, dict) or "class" not in group or "count" not in group:
                raise UserError(where, f"{key}[{i}] needs 'class' and 'count'")
            if not isinstance(group["count"], int) or group["count"] < 1:
                raise UserError(where, f"{key}[{i}].count must be a positive integer")
            if "position" in group:
                pos = group["position"]
                ok = isinstance(pos, list) and len(pos) == 2 and isinstance(pos[1], int) and 0 <= pos[1] < i
                if not ok:
                    raise UserError(where, f"{key}[{i}].position must be [relation, index of an earlier group]")
                if pos[0] not in RELATIONS:
                    raise UserError(f"{where}: {key}[{i}].position", f"unknown relation {pos[0]!r}", RELATIONS)
    return meta


def write_jsonl(prompts: list[dict], path: str | os.PathLike) -> Path:
    """One JSON object per line, atomically."""
    return write_text(path, "".join(json.dumps(p) + "\n" for p in prompts))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read and validate a GenEval metadata file; a bad line raises UserError "file:line: why"."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise UserError("metadata", f"no such file: {path}") from None
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            meta = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(where, f"not JSON ({e.msg})") from None
        prompts.append(validate(meta, where))
    if not prompts:
        raise UserError("metadata", f"no prompts in {path}")
    return prompts
