"""Position and colour attribution split by which binding of the prompt's words training showed,
counted from a scored folder's own files; a failed image that shows the twin's binding counts so."""
from __future__ import annotations

import json

import numpy as np
import pytest

from harness.data.shapes import render, scene_from_metadata
from harness.errors import UserError
from harness.geneval.__main__ import main
from harness.geneval.export import _png
from harness.geneval.prompts import all_includes, is_held_out_prompt, twin
from harness.geneval.twins import split_by_twin


def _prompt(tag, held, twin_held):
    return next(p for p in all_includes(tag)
                if bool(is_held_out_prompt(p)) == held and bool(is_held_out_prompt(twin(p))) == twin_held)


def test_split_by_twin_counts_each_image_by_which_binding_training_showed(tmp_path, capsys):
    # (prompt, [(drawn for: the prompt or its twin, scored correct)])
    cases = [(_prompt("color_attr", True, True), [("prompt", True), ("twin", False)]),
             (_prompt("color_attr", True, False), [("twin", False), ("twin", False)]),
             (_prompt("color_attr", False, False), [("prompt", True)]),
             (_prompt("position", True, False), [("prompt", True), ("twin", False)]),
             (all_includes("counting")[0], [("prompt", True)])]
    rng, images = np.random.default_rng(0), []
    for index, (meta, draws) in enumerate(cases):
        folder = tmp_path / f"{index:05d}"
        (folder / "samples").mkdir(parents=True)
        (folder / "metadata.jsonl").write_text(json.dumps(meta))
        for k, (drawn, correct) in enumerate(draws):
            shown = meta if drawn == "prompt" else twin(meta)
            (folder / "samples" / f"{k:04d}.png").write_bytes(_png(render(scene_from_metadata(shown, rng, "grid", 4), 32)))
            images.append({"index": index, "tag": meta["tag"], "correct": correct,
                           "filename": f"{index:05d}/samples/{k:04d}.png"})
    with pytest.raises(UserError, match="scores.json"):
        split_by_twin(tmp_path)
    (tmp_path / "scores.json").write_text(json.dumps({"images": images}))
    assert split_by_twin(tmp_path) == {
        "color_attr": {"both seen": (1, 0, 1), "twin only": (0, 2, 2), "neither": (1, 1, 2)},
        "position": {"twin only": (1, 1, 2)}}
    main(["twins", str(tmp_path)])
    assert "twin only: 0/2 correct, 2 drew the twin; neither: 1/2 correct, 1 drew the twin" in capsys.readouterr().out
