"""What the grid-world probes share: their command lines refuse bad arguments in one line naming
the flag (exit code 2), and their scenes need the grid layout."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from harness.errors import UserError
from harness.evaluate import binding, occupancy

DATA = OmegaConf.create({"layout": "free", "cells": 4, "nuisance": "none", "unnamed_color": "random",
                         "resolution": 32})


@pytest.mark.parametrize("probe", [occupancy, binding])
def test_bad_arguments_are_one_line_errors(probe, capsys):
    for argv, field in ((["run", "--cfg", "0.5"], "--cfg"), (["run", "--draws", "0"], "--draws"),
                        (["run", "--scenes", "0"], "--scenes")):
        with pytest.raises(SystemExit) as e:
            probe.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {field}") and "\n" not in err


@pytest.mark.parametrize("scenes", [occupancy.counting_scenes, binding.colour_scenes])
def test_free_layout_is_refused_naming_the_field(scenes):
    with pytest.raises(UserError, match="data.layout"):
        scenes(DATA, 4, seed=0)
