"""make bench's sampling measurements on a tiny model: what each variant reports."""
import pytest

from harness import bench, config

from tests.conftest import SMOKE


@pytest.mark.parametrize("token", ["continuous", "discrete"])
def test_raster_sampling_reports_the_kv_cache_speedup_and_the_heads_share(token):
    cfg = config.load(SMOKE + [f"model.token={token}", "model.order=raster"])
    r = bench.time_sampling(cfg, batch=2, repeats=1)
    assert r["images_per_second"] > 0 and r["images_per_second_uncached"] > 0
    assert r["kv_cache_speedup"] == pytest.approx(r["images_per_second"] / r["images_per_second_uncached"])
    if token == "continuous":
        assert 0 < r["diffusion_head_share"] < 1
        assert r["kv_cache_speedup_transformer"] > 0
    else:
        assert "diffusion_head_share" not in r and "kv_cache_speedup_transformer" not in r


def test_random_order_sampling_reports_images_per_second_by_steps():
    cfg = config.load(SMOKE + ["model.token=continuous", "model.order=random"])
    r = bench.time_sampling(cfg, batch=2, repeats=1)
    assert set(r["images_per_second_by_steps"]) == {4, 8, 16, 32}
    assert 0 < r["diffusion_head_share"] < 1



@pytest.mark.parametrize("token", ["continuous", "discrete"])
def test_training_and_sampling_are_timed_on_the_study_config_with_its_frozen_encoder(token):
    """The default study reads cached features of a frozen encoder (text.encoder=minilm), not
    captions: the timed step and sampler get them as training and evaluation do (make bench
    failed with KeyError on both)."""
    cfg = bench.study_config(token, "random", "xxs")
    assert cfg.text.encoder != "learned"
    r = bench.time_training(cfg, steps=1, warmup=0)
    assert r["step_seconds"] > 0 and r["params"] > 0 and r["achieved_gflops"] > 0
    assert bench.time_sampling(cfg, batch=2, repeats=1)["images_per_second"] > 0


def test_the_token_shard_section_is_refreshed_in_place_before_the_notes(tmp_path):
    margin = [{"size": s, "micro_batch": 16, "step_seconds": 0.5, "samples_per_second_needed": n,
               "workers": 8, "samples_per_second_supplied": 800.0, "margin": 800.0 / n}
              for s, n in (("166M", 1600.0), ("369M", 400.0))]
    d = {"shards": 20, "images_per_shard": 64, "resolution": 32,
         "encode_1_shards": {"peak_rss_mb": 900.0, "seconds": 9.0},
         "encode_20_shards": {"peak_rss_mb": 905.0, "seconds": 11.0},
         "shapes_samples_per_second_per_worker": 3000.0, "shapes_bytes_per_sample": 8000.0,
         "paper_shaped": {"bytes_per_sample": 557648, "samples_per_second_per_worker": 100.0,
                          "mb_per_second_per_worker": 55.8},
         "paper_margin": margin}
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nmeasured\n\n" + bench.NOTES_MARK + "\nhand-written\n")
    bench.refresh_data_streaming(docs, d)
    bench.refresh_data_streaming(docs, {**d, "encode_1_shards": {"peak_rss_mb": 901.0, "seconds": 9.0}})
    text = docs.read_text()
    assert text.count(bench.DATA_BEGIN) == 1 and "**901 MB for 1 shard, 905 MB for 20 shards**" in text
    assert text.index(bench.DATA_END) < text.index(bench.NOTES_MARK) and text.endswith("hand-written\n")
    assert "| 166M | 16 | 0.500 | 1600 | 892 | 8 | 800 | 0.5x |" in text
    assert "falls behind at 166M" in text


def test_the_doc_names_the_cpu_and_its_kernels_and_marks_what_a_variant_does_not_measure():
    """Two machines of one platform string can round differently (calibration items 92 and 94 of
    docs/results/cpu-study), so the header names the CPU and torch's kernel set; a random-order
    sampler has no KV cache and a discrete one no diffusion head, which reads "–", not "nan"."""
    r = {"date": "2026-12-07T09:00:00", "threads": 1, "matmul_gflops": 100.0, "matmul_gflops_after": 99.0,
         "peak_rss_mb": 1000.0,
         "machine": {"platform": "Linux-x86_64", "cpu": "AMD EPYC", "cpu_capability": "AVX512",
                     "torch": "2.14.1", "cpus": 2},
         "training": {},
         "sampling": {"discrete-random-xl": {"images_per_second": 25.0, "diffusion_head_share": float("nan")},
                      "continuous-raster-xl": {"images_per_second": 26.0, "images_per_second_uncached": 17.0,
                                               "kv_cache_speedup": 1.53, "diffusion_head_share": 0.75}}}
    text = bench.render_markdown(r)
    assert "on 2026-12-07T09:00:00: AMD EPYC (AVX512 kernels), 2 CPUs, Linux-x86_64, torch 2.14.1, 1 thread" in text
    assert "| discrete-random-xl | 25.00 | – | – | – |" in text
    assert "| continuous-raster-xl | 26.00 | 17.00 | 1.5 | 75% |" in text and "nan" not in text


def test_each_timed_training_step_draws_afresh(monkeypatch):
    """Without a trainer a module's global_step stays 0, so every timed step drew step 0's
    randomness: random order was timed at one mask ratio (17% masked for Fluid, whose runs in the
    study took 23-31% longer a step; calibration item 97 of docs/results/cpu-study)."""
    seeds = []

    class Recording(bench.GeneratorModule):
        def training_step(self, batch, batch_idx):
            seeds.append(self.step_generator(0).initial_seed())
            return super().training_step(batch, batch_idx)

    monkeypatch.setattr(bench, "GeneratorModule", Recording)
    bench.time_training(bench.study_config("continuous", "random", "xxs"), steps=3, warmup=1)
    assert len(seeds) == 4 and len(set(seeds)) == 4
