"""Export writes the official GenEval layout; score reads it back; the CLI wires both."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from harness.data.shapes import render, scene_from_metadata
from harness.errors import UserError
from harness.geneval.__main__ import main
from harness.geneval.export import export, score

FIXTURE = [
    {"tag": "single_object", "include": [{"class": "triangle", "count": 1}], "prompt": "a photo of a triangle"},
    {"tag": "counting", "include": [{"class": "square", "count": 3}], "exclude": [{"class": "square", "count": 4}],
     "prompt": "a photo of three squares"},
    {"tag": "position", "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1, "position": ["below", 0]}],
     "prompt": "a photo of a square below a circle"},
    {"tag": "color_attr", "include": [{"class": "circle", "count": 1, "color": "yellow"}, {"class": "triangle", "count": 1, "color": "purple"}],
     "prompt": "a photo of a yellow circle and a purple triangle"},
]


class RenderingSampler:
    """Stands in for a trained model: renders a true scene for each prompt it knows."""

    def __init__(self, prompts: list[dict], resolution: int = 32):
        self.by_text = {p["prompt"]: p for p in prompts}
        self.resolution = resolution
        self.calls: list[tuple[int, int]] = []

    def generate(self, prompts: list[str], seed: int) -> np.ndarray:
        self.calls.append((len(prompts), seed))
        rng = np.random.default_rng(seed)
        return np.stack([render(scene_from_metadata(self.by_text[t], rng), self.resolution) for t in prompts])


@pytest.fixture
def metadata_file(tmp_path):
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in FIXTURE))
    return path


def test_export_writes_the_official_layout(tmp_path, metadata_file):
    sampler = RenderingSampler(FIXTURE)
    out = export(metadata_file, sampler, tmp_path / "out", images_per_prompt=3, batch_size=6)
    assert sampler.calls == [(6, 0), (6, 1)]  # two prompts per call, one seed per chunk
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001", "00002", "00003"]
    for i, meta in enumerate(FIXTURE):
        d = out / f"{i:05d}"
        with open(d / "metadata.jsonl") as f:
            assert json.load(f) == meta
        assert sorted(p.name for p in (d / "samples").iterdir()) == ["0000.png", "0001.png", "0002.png"]
        assert np.asarray(Image.open(d / "samples" / "0000.png")).shape == (32, 32, 3)
        assert np.asarray(Image.open(d / "grid.png")).shape == (32, 3 * 32 + 2 * 2, 3)
    assert not list(out.rglob("*.tmp"))


def test_score_of_true_renders_is_one_and_is_saved(tmp_path, metadata_file):
    out = export(metadata_file, RenderingSampler(FIXTURE), tmp_path / "out", images_per_prompt=4)
    summary = score(out)
    assert summary == {"single_object": 1.0, "counting": 1.0, "position": 1.0, "color_attr": 1.0, "overall": 1.0}
    saved = json.loads((out / "scores.json").read_text())
    assert saved["summary"] == summary and saved["n_images"] == 16 and all(r["correct"] for r in saved["images"])


def test_score_catches_wrong_images(tmp_path, metadata_file):
    out = export(metadata_file, RenderingSampler(FIXTURE), tmp_path / "out", images_per_prompt=2)
    blank = np.full((32, 32, 3), 70, np.uint8)
    Image.fromarray(blank).save(out / "00002" / "samples" / "0001.png")
    summary = score(out)
    assert summary["position"] == 0.5 and summary["overall"] == pytest.approx(0.875)


def test_export_resumes_without_resampling(tmp_path, metadata_file):
    sampler = RenderingSampler(FIXTURE)
    export(metadata_file, sampler, tmp_path / "out", images_per_prompt=2, batch_size=4)
    (tmp_path / "out" / "00003" / "grid.png").unlink()
    export(metadata_file, sampler, tmp_path / "out", images_per_prompt=2, batch_size=4)
    assert sampler.calls == [(4, 0), (4, 1), (4, 1)]


def test_malformed_metadata_is_a_user_error_with_file_and_line(tmp_path, metadata_file):
    lines = metadata_file.read_text().splitlines()
    lines[2] = lines[2].replace('"include"', '"includes"')
    metadata_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf"{metadata_file}:3: missing key 'include'"):
        export(metadata_file, RenderingSampler(FIXTURE), tmp_path / "out")


def test_bad_sampler_output_is_reported(tmp_path, metadata_file):
    class Wrong:
        def generate(self, prompts, seed):
            return np.zeros((len(prompts), 32, 32, 3), np.float32)

    with pytest.raises(ValueError, match="uint8"):
        export(metadata_file, Wrong(), tmp_path / "out")


def test_cli_prompts_and_score(tmp_path, metadata_file, capsys):
    main(["prompts", "--out", str(tmp_path / "p.jsonl"), "--n-per-tag", "2"])
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 12
    out = export(metadata_file, RenderingSampler(FIXTURE), tmp_path / "out", images_per_prompt=1)
    capsys.readouterr()
    main(["score", str(out)])
    assert "overall  1.000" in capsys.readouterr().out


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["score", str(tmp_path / "nowhere")])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: dir: not a directory")
    bad = tmp_path / "m.jsonl"
    bad.write_text("{}\n")
    with pytest.raises(SystemExit):  # rejected before any model (harness.sampling) is loaded
        main(["export", "--metadata", str(bad), "--run", str(tmp_path), "--out", str(tmp_path / "o")])
    assert f"{bad}:1: missing key 'tag'" in capsys.readouterr().err


def test_cli_export_samples_at_the_guidance_and_temperature_asked(tmp_path, metadata_file, monkeypatch, capsys):
    """``--cfg`` / ``--temperature`` replace the run's sampling settings for the export (the
    scales of calibration item 24); out of range, one line naming the option, exit 2."""
    from omegaconf import OmegaConf

    import harness.sampling

    class Guided(RenderingSampler):
        def __init__(self):
            super().__init__(FIXTURE)
            self.cfg = OmegaConf.create({"sample": {"cfg": 5.0, "temperature": 0.975}})
            self.seen: list[tuple[float, float]] = []

        def generate(self, prompts, seed):
            self.seen.append((self.cfg.sample.cfg, self.cfg.sample.temperature))
            return super().generate(prompts, seed)

    made = []
    monkeypatch.setattr(harness.sampling.Sampler, "from_run", lambda run: made.append(Guided()) or made[-1])
    main(["export", "--metadata", str(metadata_file), "--run", str(tmp_path), "--out", str(tmp_path / "a"),
          "--cfg", "2"])
    main(["export", "--metadata", str(metadata_file), "--run", str(tmp_path), "--out", str(tmp_path / "b"),
          "--temperature", "1.1"])
    assert set(made[0].seen) == {(2.0, 0.975)} and set(made[1].seen) == {(5.0, 1.1)}
    capsys.readouterr()
    for option, value in (("--cfg", "0.5"), ("--temperature", "0")):
        with pytest.raises(SystemExit) as e:
            main(["export", "--metadata", str(metadata_file), "--run", str(tmp_path), "--out",
                  str(tmp_path / "c"), option, value])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(f"error: {option[2:]}: ") and len(err.splitlines()) == 1
    assert len(made) == 2, "rejected before a model is loaded"


def test_cli_module_imports_without_a_sampler():
    code = "import sys; sys.modules['harness.sampling'] = None; import harness.geneval.__main__"
    subprocess.run([sys.executable, "-c", code], check=True)
