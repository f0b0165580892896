"""make gpu-check's CPU-side parts: the one-line refusal without a GPU, the bf16 peak table, the MFU
arithmetic, the verdicts on measured numbers, and the benchmarks-doc section between its markers.
(The measurements themselves need a GPU: run ``make gpu-check`` on one.)"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import gpu_check as G

REPO = Path(__file__).resolve().parents[1]


def test_without_a_gpu_it_stops_with_one_line_and_exit_2():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "harness.gpu_check"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: device: no CUDA GPU visible: make gpu-check runs on one H100/H200-class GPU"]


def test_bad_arguments_are_one_line_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        G.main(["--sizes", "166M,7B"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: --sizes: unknown value '7B' (valid: 166M, 369M")


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12),   # SXM
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA H200 NVL", 835e12),
    ("NVIDIA GH200 480GB", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
])
def test_bf16_peak_by_device_name(name, peak):
    assert G.bf16_peak(name)[1] == peak


def test_unknown_gpu_has_no_peak_and_no_mfu():
    assert G.bf16_peak("Tesla T4") is None
    assert G.mfu(1e15, 1.0, None) is None


def test_mfu_is_achieved_flops_over_the_peak():
    assert G.mfu(989e12, 2.0, 989e12) == 0.5
    # 7.6e13 executed FLOPs per step (166M continuous/random, 256 images) in 0.2 s on an H200
    assert G.mfu(7.6e13, 0.2, 989e12) == pytest.approx(0.3843, abs=1e-4)


def numbers(**change) -> dict:
    """One variant's measurements, all within tolerance unless ``change``d."""
    r = {"run": "continuous-random-166M", "micro_batch": 256, "tokens": 256, "params": 177e6,
         "executed_flops_per_step": 7.6e13,
         "sdpa": {"fast": "ok", "flash": "No available kernel", "efficient": "ok"},
         "memory": {"peak_bytes": 58e9, "estimate_bytes": 60e9},
         "eager": {"step_seconds": 0.2, "tokens_per_second": 327680.0, "mfu": 0.38,
                   "losses": [1.0, 0.9, 0.8]},
         "compiled": {"applied": True, "step_seconds": 0.16, "tokens_per_second": 409600.0,
                      "mfu": 0.48, "losses": [1.0, 0.9, 0.805], "speedup": 1.25},
         "precision": {"loss_fp32": [1.0, 0.9], "loss_bf16": [1.0, 0.905], "finite": True,
                       "loss_rel_diff": 0.0056, "grad_cosine": 0.9995},
         "sampling": {"images": 32, "images_per_second": 12.5, "steps": 64}}
    for path, value in change.items():
        *parents, leaf = path.split("__")
        node = r
        for p in parents:
            node = node[p]
        node[leaf] = value
    return r


@pytest.mark.parametrize("change, failing", [
    ({}, None),
    ({"precision__finite": False}, "finite"),
    ({"compiled__losses": [1.0, float("nan"), 0.8]}, "finite"),
    ({"precision__loss_rel_diff": 0.04}, "matches fp32"),
    ({"precision__grad_cosine": 0.95}, "matches fp32"),
    ({"sdpa__fast": "No available kernel. Aborting execution."}, "SDPA"),
    ({"compiled__applied": False}, "compile"),
    ({"compiled__losses": [1.0, 0.9, 0.85]}, "compile"),
    ({"memory__peak_bytes": 67e9}, "memory"),
])
def test_verdicts_follow_the_tolerances(change, failing):
    checks = G.variant_checks(numbers(**change))
    assert len(checks) == 5
    failed = [c["name"] for c in checks if not c["ok"]]
    if failing is None:
        assert failed == []
    else:
        assert len(failed) == 1 and failing in failed[0], failed


def report(peak=True, **change) -> dict:
    r = numbers(**change)
    return {"date": "2026-12-01T10:00:00", "device": "NVIDIA H200", "torch": "2.14.1", "cuda": "13.0",
            "peak": {"name": "H200", "flops": 989e12} if peak else None, "runs": [r],
            "checks": G.variant_checks(r), "skipped": ["369M: the 480 s budget would run out"],
            "seconds": 401.0}


def test_section_renders_every_number_and_verdict():
    text = G.render_section(report(memory__peak_bytes=70e9))
    assert text.startswith(G.BEGIN) and text.rstrip().endswith(G.END)
    assert "NVIDIA H200 (dense bf16 peak 989 TFLOP/s (H200))" in text
    row = next(line for line in text.splitlines() if line.startswith("| continuous-random-166M"))
    assert row == ("| continuous-random-166M | 256 | 0.200 / 0.160 | 1.25x | 327,680 / 409,600 | "
                   "38% / 48% | 70.0 (60.0) | 0.56% | 0.9995 | 12.50 (64 steps) |")
    assert "Checks: 4 passed, 1 failed." in text
    assert "- **FAIL**: continuous-random-166M: peak memory within 1.10x the estimate — 70.0 GB" in text
    assert "- skipped: 369M: the 480 s budget would run out" in text
    unknown = G.render_section(report(peak=False, eager__mfu=None, compiled__mfu=None))
    assert "bf16 peak unknown for this GPU: no MFU" in unknown and "| n/a / n/a |" in unknown


def test_section_goes_between_the_markers_and_leaves_the_rest(tmp_path):
    docs = tmp_path / "benchmarks.md"
    body = "# Benchmarks\n\ncpu numbers\n\n<!-- notes: written by hand, kept by make bench -->\nnotes\n"
    docs.write_text(body)
    G.write_section(docs, G.render_section(report()))
    first = docs.read_text()
    assert first.startswith(body) and first.count(G.BEGIN) == 1  # appended after the notes
    docs.write_text(first.replace("notes\n", "notes\n\nmore notes\n") + "tail\n")
    G.write_section(docs, G.render_section(report(memory__peak_bytes=70e9)))
    second = docs.read_text()
    assert second.count(G.BEGIN) == 1 and second.count(G.END) == 1
    assert "more notes" in second and second.endswith(G.END + "\ntail\n")
    assert "70.0 (60.0)" in second and "58.0 (60.0)" not in second
