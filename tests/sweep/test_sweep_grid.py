"""Sweep files and the command line: presets load, bad input is one line naming the field and its
valid choices, exit code 2, and nothing is written."""
from __future__ import annotations

import pytest

from harness.errors import UserError
from harness.registry import LADDERS
from harness.sweep import grid
from harness.sweep.__main__ import main


def test_presets_load_and_cover_the_study():
    assert {"smoke", "cpu", "paper"} <= set(grid.presets())
    smoke = grid.load_sweep(grid.preset_path("smoke"))
    assert grid.variants(smoke) == ["continuous-random", "continuous-raster", "discrete-random",
                                    "discrete-raster"]
    assert grid.sizes(smoke) == ["xs", "s"]
    cpu = grid.load_sweep(grid.preset_path("cpu"))
    assert grid.sizes(cpu) == list(LADDERS["cpu"])  # the default study trains every cpu size
    # the hypotheses are tested against training noise at every size: two seeds per configuration
    assert all(grid.train_seeds(cpu, s, v) == [0, 1] for s in grid.sizes(cpu) for v in grid.variants(cpu))
    paper = grid.load_sweep(grid.preset_path("paper"))
    o = paper.overrides
    assert (o.data.resolution, o.tokenizer.downsample, o.tokenizer.channels) == (256, 16, 16)
    assert (o.text.aligner_layers, o.model.head_depth, o.train.precision) == (6, 6, "bf16-mixed")
    assert grid.sizes(paper) == ["166M", "369M", "665M", "1.1B", "3.1B", "10.5B"]
    assert paper.launcher.default == "slurm" and paper.launcher.slurm.gpus_per_node == 8


def test_every_training_seed_is_its_own_run(tmp_path):
    from harness.sweep import plan

    spec = grid.load_sweep(write(tmp_path, "name: t\ngrid: {token: [discrete], order: [raster], "
                                           "size: [xs, s]}\ntrain_seeds_per_size: {s: [0, 3]}\n"))
    runs = plan.build_runs(spec, ["xs", "s"], ["discrete-raster"], [f"results_dir={tmp_path}"])
    assert [(r.cfg.model.size, r.cfg.train.seed) for r in runs] == [("xs", 0), ("s", 0), ("s", 3)]
    assert len({r.key for r in runs}) == 3


def test_a_variants_training_seeds_add_to_every_size(tmp_path):
    from harness.sweep import plan

    spec = grid.load_sweep(write(tmp_path, "name: t\n"
                                           "grid: {token: [discrete], order: [random, raster], "
                                           "size: [xs, s]}\n"
                                           "train_seeds_per_size: {s: [0, 3]}\n"
                                           "train_seeds_per_variant: {discrete-random: [1, 3]}\n"))
    runs = plan.build_runs(spec, ["xs", "s"], grid.variants(spec), [f"results_dir={tmp_path}"])
    assert [(r.cfg.model.size, r.cfg.model.order, r.cfg.train.seed) for r in runs] == [
        ("xs", "random", 0), ("xs", "random", 1), ("xs", "random", 3), ("xs", "raster", 0),
        ("s", "random", 0), ("s", "random", 1), ("s", "random", 3), ("s", "raster", 0),
        ("s", "raster", 3)]


def test_selection_keeps_ladder_order_and_accepts_any_ladder_size():
    spec = grid.load_sweep(grid.preset_path("smoke"))
    assert grid.select(spec, "m,xs", None) == (["xs", "m"], grid.variants(spec))
    assert grid.select(spec, "all", "discrete-raster")[1] == ["discrete-raster"]


def write(tmp_path, text: str):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,field,choice", [
    ("name: t\noverrides: {train: {stepz: 3}}\n", "overrides.train.stepz", "steps"),
    ("name: t\ngrid: {token: [continous]}\n", "grid.token", "continuous"),
    ("name: t\ngrid: {size: [xxl]}\n", "size 'xxl'", "xl"),
    ("name: t\nlauncher: {default: sge}\n", "launcher.default", "slurm"),
    ("name: t\nsize_overrides: {s: {model: {widht: 3}}}\n", "size_overrides.s.model.widht", "width"),
    ("name: t\nlauncher: {local: {max_paralel: 2}}\n", "launcher.local.max_paralel", None),
    ("name: t\ntrain_seeds: [0, 0]\n", "train_seeds", "distinct"),
    ("name: t\ntrain_seeds_per_size: {huge: [1]}\n", "train_seeds_per_size 'huge'", "xl"),
    ("name: t\ntrain_seeds_per_variant: {continuous-randm: [1]}\n",
     "train_seeds_per_variant 'continuous-randm'", "continuous-random"),
    ("name: t\ntrain_seeds_per_variant: {discrete-raster: []}\n",
     "train_seeds_per_variant.discrete-raster", "distinct"),
    ("name: t\nvariant_overrides: {continuous-randm: {sample: {temperature: 0.5}}}\n",
     "variant_overrides 'continuous-randm'", "continuous-random"),
    ("name: t\nvariant_overrides: {discrete-random: {sample: {temperature: 0}}}\n",
     "variant_overrides.discrete-random.sample.temperature", "> 0"),
])
def test_sweep_file_errors_name_the_field(tmp_path, text, field, choice):
    with pytest.raises(UserError) as e:
        grid.load_sweep(write(tmp_path, text))
    line = str(e.value)
    assert "\n" not in line and field in line, line
    if choice:
        assert choice in line, line


@pytest.mark.parametrize("args,field,choice", [
    (["--preset", "smok"], "--preset", "smoke"),
    (["--preset", "smoke", "--size", "xs,huge"], "--size", "xl"),
    (["--preset", "smoke", "--variants", "continuous-diagonal"], "--variants", "discrete-raster"),
    (["--preset", "smoke", "--launcher", "pbs"], "--launcher", "debug"),
    (["--preset", "smoke", "train.stepz=3"], "train.stepz", "steps"),
    (["--preset", "smoke", "model.token=discrete"], "model.token", "--variants"),
])
def test_bad_command_lines_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, args, field, choice):
    results = tmp_path / "results"
    with pytest.raises(SystemExit) as e:
        main([*args, f"results_dir={results}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err and choice in err, err
    assert not results.exists()
