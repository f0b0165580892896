"""Shapes-world GenEval prompts: balanced, held out where asked, and strict about bad files."""
from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

from harness.data.shapes import is_held_out, scene_from_metadata, vocabulary
from harness.registry import GENEVAL_TAGS as TAGS
from harness.errors import UserError
from harness.geneval.prompts import all_includes, is_held_out_prompt, make_prompts, read_jsonl, validate, write_jsonl

HELD_OUT_TAGS = ("counting", "position", "color_attr")


def test_n_per_tag_prompts_in_geneval_schema():
    prompts = make_prompts(20, seed=3)
    assert Counter(p["tag"] for p in prompts) == {t: 20 for t in TAGS}
    for p in prompts:
        assert p["prompt"].startswith("a photo of ") and set(p["prompt"].split()) <= set(vocabulary())
        assert all(g["count"] >= 1 for g in p["include"])
        assert ("exclude" in p) == (p["tag"] == "counting")
    assert make_prompts(20, seed=3) == prompts and make_prompts(20, seed=4) != prompts


def test_compositional_prompts_are_held_out_and_test_prompts_are_not():
    rng = np.random.default_rng(0)
    for p in make_prompts(30, split="compositional"):
        if p["tag"] in HELD_OUT_TAGS:
            assert is_held_out_prompt(p) and is_held_out(scene_from_metadata(p, rng)), p["prompt"]
    assert not any(is_held_out_prompt(p) for p in make_prompts(30, split="test"))


@pytest.mark.parametrize("tag", ["counting", "position"])
def test_prompt_hold_out_agrees_with_the_scene_rule(tag):
    """A single-coloured scene of a prompt shows no colour pair, so only the prompt's combination decides."""
    rng = np.random.default_rng(0)
    for p in all_includes(tag):
        scene = scene_from_metadata(p, rng)
        scene.objects = [dataclasses.replace(o, color="red") for o in scene.objects]
        assert is_held_out(scene) == is_held_out_prompt(p), p["prompt"]


def test_small_tags_cycle_through_all_their_prompts():
    single = [p["prompt"] for p in make_prompts(9) if p["tag"] == "single_object"]
    assert Counter(single) == {"a photo of a circle": 3, "a photo of a square": 3, "a photo of a triangle": 3}


def test_jsonl_round_trip(tmp_path):
    prompts = make_prompts(3)
    path = write_jsonl(prompts, tmp_path / "prompts.jsonl")
    assert read_jsonl(path) == prompts


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"tag": "colors", "prompt": "a photo of a red circle"}', "missing key 'include'"),
        ('{"tag": "colors", "prompt": "x", "include": [{"class": "circle"}]', "not JSON"),
        ('{"tag": "shapes", "prompt": "x", "include": [{"class": "circle", "count": 1}]}', "unknown value 'shapes'"),
        ('{"tag": "position", "prompt": "x", "include": [{"class": "circle", "count": 1, "position": ["left of", 0]}]}', "earlier group"),
        ('{"tag": "counting", "prompt": "x", "include": [{"class": "circle", "count": 0}]}', "positive integer"),
        ('[1, 2]', "expected a JSON object"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    good = '{"tag": "single_object", "prompt": "a photo of a circle", "include": [{"class": "circle", "count": 1}]}'
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join([good] * 6 + [line, good]) + "\n")
    with pytest.raises(UserError) as e:
        read_jsonl(path)
    assert str(e.value).startswith(f"{path}:7") and message in str(e.value)


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="split"):
        make_prompts(5, split="holdout")
    with pytest.raises(UserError, match="n_per_tag"):
        make_prompts(0)
    with pytest.raises(UserError, match="no such file"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_a_twin_has_the_same_words_bound_the_other_way():
    """twin(): position exchanges subject and reference, colour attribution the two colours; the
    words stay the same, the twin of a twin is the prompt, and the held-out split holds out the
    twin of no arrangement and of 8 of its 18 colour pairs."""
    from harness.geneval.prompts import twin

    assert twin(all_includes("counting")[0]) is None
    for tag in ("position", "color_attr"):
        for p in all_includes(tag):
            t = twin(p)
            assert sorted(t["prompt"].split()) == sorted(p["prompt"].split()) and t["prompt"] != p["prompt"]
            assert twin(t)["include"] == p["include"] and validate(t, "twin") is t
    held = [p for p in all_includes("position") if is_held_out_prompt(p)]
    assert held and not any(is_held_out_prompt(twin(p)) for p in held)
    held = [p for p in all_includes("color_attr") if is_held_out_prompt(p)]
    assert sum(bool(is_held_out_prompt(twin(p))) for p in held) / len(held) == pytest.approx(8 / 18)
    t = twin({"tag": "position", "include": [{"class": "square", "count": 1},
                                               {"class": "circle", "count": 1, "position": ["left of", 0]}]})
    assert t["prompt"] == "a photo of a square left of a circle"
