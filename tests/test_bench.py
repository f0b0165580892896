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

