"""Malformed input: a one-line error naming the field (and the valid choices), exit code 2, no
traceback, and nothing written under results/. Each case runs the real CLI entry point."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.evaluate.__main__ import main as evaluate_main
from harness.geneval.__main__ import main as geneval_main
from harness.sweep.__main__ import main as sweep_main
from harness.train.__main__ import main as train_main


def _write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def _cases(tmp: Path, results: Path):
    sweep = lambda *a: (sweep_main, ["--preset", "smoke", "--dry-run", *a, f"results_dir={results}"])
    train = lambda *a: (train_main, [*a, f"results_dir={results}"])
    bad_meta = _write(tmp, "meta.jsonl", '{"tag": "colors", "prompt": "a red circle", "include": '
                      '[{"class": "circle", "count": 1, "color": "red"}]}\n{"tag": "colors"\n')
    no_include = _write(tmp, "meta2.jsonl", json.dumps({"tag": "colors", "prompt": "x"}) + "\n")
    return {
        "unknown token": (*train("model.token=analog"), "model.token", "continuous"),
        "unknown order": (*train("model.order=spiral"), "model.order", "raster"),
        "unknown size": (*train("model.size=huge"), "model.size", "xl"),
        "unknown ladder": (*train("model.ladder=gpu"), "model.ladder", "paper"),
        "typo in a key": (*train("model.toke=discrete"), "model.toke", "token"),
        "typo in a group": (*train("trian.steps=5"), "trian", "train"),
        "wrong type": (*train("train.steps=many"), "train.steps", None),
        "float for int": (*train("train.batch_size=1.5"), "train.batch_size", None),
        "negative steps": (*train("train.steps=-3"), "train.steps", None),
        "zero steps": (*train("train.steps=0"), "train.steps", None),
        "zero width": (*train("model.width=0", "model.heads=1"), None, None),
        "zero batch": (*train("train.batch_size=0"), "train.batch_size", None),
        "heads not dividing width": (*train("model.heads=5"), "model.heads", None),
        "bad precision": (*train("train.precision=fp8"), "train.precision", "bf16-mixed"),
        "unknown dataset": (*train("data.name=imagenet"), "data.name", "shapes"),
        "missing dataset path": (*train("data.name=folder", "data.path=/no/such/dir"), "data.path", None),
        "dataset without path": (*train("data.name=webdataset"), "data.path", None),
        "not key=value": (*train("model.token"), "model.token", None),
        "cfg below 1": (*train("sample.cfg=0.5"), "sample.cfg", None),
        "dropout out of range": (*train("text.dropout_prob=1.5"), "text.dropout_prob", None),
        "resolution not divisible": (*train("data.resolution=30"), "tokenizer.downsample", None),
        "missing config file": (train_main, ["--config", str(tmp / "nope.yaml"), f"results_dir={results}"],
                                "config file", None),
        "malformed yaml": (train_main, ["--config", _write(tmp, "bad.yaml", "model: [token: \n"),
                                        f"results_dir={results}"], "bad.yaml", None),
        "sweep: unknown preset": (sweep_main, ["--preset", "huge", f"results_dir={results}"], "--preset", "smoke"),
        "sweep: size not in ladder": (*sweep("--size", "xxl"), "size", "xs"),
        "sweep: unknown variant": (*sweep("--variants", "continuous-spiral"), "variant", "continuous-random"),
        "sweep: unknown launcher": (*sweep("--launcher", "kubernetes"), "launcher", "slurm"),
        "sweep: empty grid": (sweep_main, ["--file", _write(tmp, "empty.yaml", "name: empty\ngrid: {token: [], order: [raster], size: [xs]}\n"),
                                           "--dry-run", f"results_dir={results}"], "grid", None),
        "sweep: malformed yaml": (sweep_main, ["--file", _write(tmp, "broken.yaml", "name: x\ngrid: [\n"),
                                               "--dry-run", f"results_dir={results}"], "broken.yaml", None),
        "sweep: typo in override": (*sweep("train.stepz=3"), "train.stepz", "steps"),
        "geneval: malformed metadata line": (geneval_main, ["export", "--metadata", bad_meta, "--run",
                                                            str(tmp), "--out", str(tmp / "out")], "meta.jsonl:2", None),
        "geneval: missing include": (geneval_main, ["export", "--metadata", no_include, "--run", str(tmp),
                                                    "--out", str(tmp / "out2")], "meta2.jsonl:1", None),
        "evaluate: not a run dir": (evaluate_main, [str(tmp / "no-run")], None, None),
    }


def _names() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return list(_cases(Path(d), Path(d) / "results"))


CASES = _names()


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, tmp_path, capsys):
    results = tmp_path / "results"
    fn, argv, field, choice = _cases(tmp_path, results)[name]
    with pytest.raises(SystemExit) as exc:
        fn(argv)
    assert exc.value.code == 2, name
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    if field:
        assert field in lines[0], (name, lines[0])
    if choice:
        assert choice in lines[0], (name, lines[0])
    assert not results.exists() or not any(results.rglob("*")), list(results.rglob("*"))


def test_there_are_at_least_25_cases():
    assert len(CASES) >= 25
