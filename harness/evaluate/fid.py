"""FID, KID and precision/recall through torch-fidelity, and FID through clean-fid, in one feature space.

Feature spaces (:func:`feature_space`):
  shapes     the shapes world's attribute CNN (``features.py``): the default for ``data.name=shapes``
  inception  Inception v3, the paper's metric, chosen whenever ``eval.inception_path`` is set: that
             path must be torch-fidelity's weights file (``weights-inception-2015-12-05-6726825d.pth``)
Both libraries run the same torch-fidelity extractor module (clean-fid takes it as its
``custom_feat_extractor``, with no resize of its own), so on the same images they see identical
features and their FIDs differ only in how each takes the matrix square root. Nothing is ever
downloaded: a configured but missing Inception file is a UserError before any work starts.

Reference set (:func:`ensure_reference`): ``n`` real images with their captions, written once as
PNGs under ``<feature space dir>/reference-<hash>/`` with their captions (generate for exactly
these captions, so FID compares conditional distributions as COCO FID-30K does) and both libraries'
reference statistics (torch-fidelity's feature cache, clean-fid's mu/sigma). Built once per hash of
what it holds, like every stage-0 artifact (``harness.io.build_once``). Where the images come from
is ``eval.reference`` (:func:`reference_source`):
  data   the first ``n`` images of the training data's val split (the default)
  coco   zero-shot, the paper's protocol: a draw of ``n`` MS-COCO val images and one caption each,
         seeded by ``eval.reference.seed`` (``harness.data.real``'s COCO reader), independent of
         what the run trained on; runs that share the draw and the feature space share the set
The shapes feature space describes only shapes-world images: any other reference needs
``eval.inception_path``.

Other feature nets (:func:`other_net_spaces`): a shapes-world FID is also read under nets trained
with the seeds ``FID_NET_SEEDS`` (``fid_net<seed>``, FID alone, :func:`fid_value`), since the one
net's own training seed moves FID as much as a model's does (calibration item 93).
"""
from __future__ import annotations

import contextlib
import io
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch_fidelity
from cleanfid import fid as cleanfid
from omegaconf import DictConfig, OmegaConf
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.metric_fid import fid_featuresdict_to_statistics_cached
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor, extract_featuresdict_from_input_id_cached

from harness.config import config_hash
from harness.data.datasets import build_dataset, data_key, rendered
from harness.errors import UserError
from harness.evaluate import features
from harness.io import build_once, read_json, write_bytes, write_json
from harness.registry import FID_NET_SEEDS, FID_NETS

SHAPES_EXTRACTOR = "harness-shapes"
INCEPTION_EXTRACTOR = "inception-v3-compat"
REFERENCE_SPLIT = "val"
REFERENCE_CACHE_NAME = "reference"
MIN_SAMPLES = 8  # a covariance and 3-nearest-neighbour balls need a few points
KID_SUBSET_SIZE = 1000  # torch-fidelity's default, capped at the sample count


class ShapesFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity adapter of the shapes feature net: uint8 (N,3,H,W) -> ("features",).

    Runs in float64 so features do not depend on batch composition at the 1e-7 level."""

    LAYER = "features"

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"{name} needs feature_extractor_weights_path (a stage-0 model.pt)")
        net, _ = features.load_feature_net(Path(feature_extractor_weights_path).parent)
        self.net = net.double()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return (ShapesFeatureExtractor.LAYER,)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return ShapesFeatureExtractor.LAYER

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.net.features(x.double()),)


if SHAPES_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(SHAPES_EXTRACTOR, ShapesFeatureExtractor)


class CleanFidExtractor:
    """clean-fid's ``custom_feat_extractor``: its float batches (N,3,H,W in [0, 255]) go back to
    exact uint8 and through the torch-fidelity module, so both libraries see the same features."""

    def __init__(self, module: FeatureExtractorBase):
        self.module = module

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.module(batch.round().clamp(0, 255).to(torch.uint8))[0]


def _no_resize(image: np.ndarray) -> np.ndarray:
    """clean-fid's ``custom_fn_resize``: the extractor resizes (Inception) or needs none (shapes)."""
    return image


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class FeatureSpace:
    """A feature extractor as both libraries use it, and the stage-0 folder its caches live in."""

    name: str
    directory: Path
    extractor: str
    layer: str
    weights: Path

    def torch_fidelity_kwargs(self) -> dict:
        layers = {f"feature_layer_{m}": self.layer for m in ("fid", "kid", "prc")}
        return {"feature_extractor": self.extractor, **layers, "feature_extractor_weights_path": str(self.weights),
                "cuda": torch.cuda.is_available(), "verbose": False, "save_cpu_ram": True}

    def module(self) -> FeatureExtractorBase:
        """The torch-fidelity extractor module, loaded from local weights, on the eval device."""
        return create_feature_extractor(self.extractor, [self.layer], **self.torch_fidelity_kwargs())


def inception_weights(path: str) -> Path:
    """The configured Inception weights file; a UserError at once when it is not there."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError("eval.inception_path",
                        f"{p} does not exist: download torch-fidelity's Inception weights ({URL_INCEPTION_V3}) "
                        "on a machine with internet access and put the file at that path, or unset "
                        "eval.inception_path to measure FID in the shapes-world feature space")
    return p


def feature_space(cfg: DictConfig, spec: features.FeatureSpec | None = None) -> FeatureSpace:
    """Inception when ``eval.inception_path`` is set, else the shapes feature net (trained on first
    use with ``spec``, default ``features.DEFAULT_SPEC``)."""
    if cfg.eval.inception_path:
        weights = inception_weights(cfg.eval.inception_path)
        key = config_hash({"file": weights.name, "bytes": weights.stat().st_size})
        return FeatureSpace(f"inception-{key}", Path(cfg.results_dir) / "stage0" / f"inception-{key}",
                            INCEPTION_EXTRACTOR, "2048", weights)
    if cfg.data.name != "shapes" or cfg.eval.reference.source != "data":
        what = (f"data.name={cfg.data.name!r}" if cfg.data.name != "shapes"
                else f"eval.reference.source={cfg.eval.reference.source!r}")
        raise UserError("eval.inception_path",
                        f"needed for {what}: the default FID features are trained on "
                        "the shapes world and describe nothing else")
    directory = features.ensure_feature_net(cfg.data.resolution, cfg.results_dir, spec or features.DEFAULT_SPEC)
    return FeatureSpace(directory.name, directory, SHAPES_EXTRACTOR, ShapesFeatureExtractor.LAYER,
                        directory / "model.pt")


def other_net_spaces(cfg: DictConfig) -> dict[str, FeatureSpace]:
    """The feature spaces of the shapes nets trained with ``FID_NET_SEEDS`` (each trained on first
    use), by their metric's name (``FID_NETS``); none where FID is Inception's."""
    if cfg.eval.inception_path:
        return {}
    return {name: feature_space(cfg, features.seeded(seed)) for name, seed in zip(FID_NETS, FID_NET_SEEDS)}


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def image_name(index: int) -> str:
    return f"{index:06d}.png"


def write_pngs(images: np.ndarray, folder: str | Path, start: int = 0) -> None:
    """uint8 (N,H,W,3) images as ``folder/<start + i>.png`` (6 digits), each written atomically."""
    folder = Path(folder)
    for i, image in enumerate(images):
        write_bytes(folder / image_name(start + i), png_bytes(image))


def count_pngs(folder: str | Path) -> int:
    return sum(1 for _ in Path(folder).glob("*.png"))


@contextlib.contextmanager
def _quiet_cleanfid():
    """clean-fid's chatter goes to stderr (stdout is for results), and its call of SciPy's
    ``sqrtm(..., disp=False)``, deprecated in recent SciPy, stays silent."""
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*disp.*", category=DeprecationWarning)
        yield


def cleanfid_features(folder: str | Path, module: FeatureExtractorBase, batch_size: int) -> np.ndarray:
    """Features of every PNG in ``folder`` through clean-fid's folder reader."""
    with _quiet_cleanfid():
        return cleanfid.get_folder_features(str(folder), model=CleanFidExtractor(module), num_workers=0,
                                            batch_size=batch_size, device=_device(), mode="clean",
                                            custom_fn_resize=_no_resize, verbose=False)


def cleanfid_distance(feats: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    """clean-fid's Frechet distance between ``feats`` and reference statistics."""
    with _quiet_cleanfid():
        return float(cleanfid.frechet_distance(np.mean(feats, axis=0), np.cov(feats, rowvar=False), mu, sigma))


@dataclass(frozen=True)
class Reference:
    """A stage-0 reference set: ``images/`` (PNGs), ``captions.json``, both libraries' statistics."""

    directory: Path

    @property
    def images(self) -> Path:
        return self.directory / "images"

    @property
    def cache_root(self) -> Path:
        return self.directory / "torch_fidelity"

    @property
    def meta(self) -> dict:
        return read_json(self.directory / "meta.json")

    @property
    def n(self) -> int:
        return int(self.meta["n"])

    def captions(self) -> list[str]:
        return read_json(self.directory / "captions.json")

    def cleanfid_stats(self) -> tuple[np.ndarray, np.ndarray]:
        with np.load(self.directory / "cleanfid_stats.npz") as stats:
            return stats["mu"], stats["sigma"]


def reference_source(cfg: DictConfig, n: int) -> DictConfig:
    """The data config whose ``val`` split's first ``n`` images are the reference set: the run's own
    data (``eval.reference.source=data``), or ``n`` MS-COCO val images drawn with
    ``eval.reference.seed`` at the run's resolution (``coco``)."""
    ref = cfg.eval.reference
    if ref.source == "coco":
        return OmegaConf.create({"name": "coco", "path": str(Path(ref.path).expanduser().resolve()),
                                 "resolution": cfg.data.resolution, "seed": ref.seed, "train_size": 0,
                                 "val_size": n, "num_workers": 0})
    data = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
    data.val_size = n  # the split's first n images: for the shapes world, independent of the size
    return data


def reference_dir(cfg: DictConfig, space: FeatureSpace, n: int) -> Path:
    key = config_hash({"data": data_key(reference_source(cfg, n)), "split": REFERENCE_SPLIT, "n": n})
    return space.directory / f"reference-{key}"


def check_samples(n: int) -> None:
    if n < MIN_SAMPLES:
        raise UserError("eval.fid_samples", f"must be >= {MIN_SAMPLES} for FID, KID and precision/recall, got {n}")


def _torch_fidelity_reference(space: FeatureSpace, reference: Reference, batch_size: int) -> dict:
    """Extract and cache (in ``reference.cache_root``) torch-fidelity's features and FID statistics."""
    kwargs = {**space.torch_fidelity_kwargs(), "input2": str(reference.images),
              "input2_cache_name": REFERENCE_CACHE_NAME, "cache_root": str(reference.cache_root),
              "cache": True, "batch_size": batch_size}
    module = space.module()
    feats = extract_featuresdict_from_input_id_cached(2, module, **kwargs)
    return fid_featuresdict_to_statistics_cached(feats, REFERENCE_CACHE_NAME, module, space.layer, **kwargs)


def _build_reference(cfg: DictConfig, space: FeatureSpace, n: int, out: Path, batch_size: int) -> None:
    source = reference_source(cfg, n)
    reference = Reference(out)
    if cfg.eval.reference.source == "data":  # shared with the run's own rendered val split
        images, captions = rendered(source, REFERENCE_SPLIT, cfg.results_dir)
        write_pngs(images.numpy(), reference.images)
    else:  # 30K images at 256px: one PNG at a time, never all in memory
        ds = build_dataset(source, REFERENCE_SPLIT)
        captions = [ds.caption(i) for i in range(len(ds))]
        for i in range(len(ds)):
            write_bytes(reference.images / image_name(i), png_bytes(ds.image(i)))
    if len(captions) < n:
        raise UserError("eval.fid_samples", f"{n} reference images asked for, but {source.name} "
                        f"{source.path or ''} has only {len(captions)} readable {REFERENCE_SPLIT} images")
    write_json(out / "captions.json", list(captions))
    tf_stats = _torch_fidelity_reference(space, reference, batch_size)
    feats = cleanfid_features(reference.images, space.module(), batch_size)
    mu, sigma = np.mean(feats, axis=0), np.cov(feats, rowvar=False)
    np.savez(out / "cleanfid_stats.npz", mu=mu, sigma=sigma)
    write_json(out / "meta.json", {
        "n": n, "split": REFERENCE_SPLIT, "data_key": data_key(source), "source": cfg.eval.reference.source,
        "data": OmegaConf.to_container(source),
        "feature_space": space.name, "feature_dim": int(mu.shape[0]),
        # both libraries extracted the reference features on their own: they must agree exactly
        "stats_max_abs_diff": float(max(np.abs(tf_stats["mu"] - mu).max(), np.abs(tf_stats["sigma"] - sigma).max())),
    })


def ensure_reference(cfg: DictConfig, space: FeatureSpace, n: int | None = None) -> Reference:
    """Build (or find) the reference set of ``n`` (default ``eval.fid_samples``) real images from
    ``eval.reference`` (the module docstring)."""
    n = int(n or cfg.eval.fid_samples)
    check_samples(n)
    return Reference(build_once(reference_dir(cfg, space, n),
                                lambda tmp: _build_reference(cfg, space, n, tmp, cfg.eval.batch_size)))


def _torch_fidelity_metrics(input1: str, input2: str, n: int, space: FeatureSpace, batch_size: int, seed: int,
                            **cache) -> dict[str, float]:
    out = torch_fidelity.calculate_metrics(
        input1=input1, input2=input2, fid=True, kid=True, prc=True, batch_size=batch_size, rng_seed=seed,
        kid_subset_size=min(KID_SUBSET_SIZE, n), **space.torch_fidelity_kwargs(), **cache)
    return {"fid": out[torch_fidelity.KEY_METRIC_FID], "kid": out[torch_fidelity.KEY_METRIC_KID_MEAN],
            "kid_std": out[torch_fidelity.KEY_METRIC_KID_STD], "precision": out[torch_fidelity.KEY_METRIC_PRECISION],
            "recall": out[torch_fidelity.KEY_METRIC_RECALL], "f_score": out[torch_fidelity.KEY_METRIC_F_SCORE]}


def fid_metrics(generated: str | Path, reference: Reference, space: FeatureSpace, batch_size: int = 128,
                seed: int = 0) -> dict[str, float]:
    """fid, kid, kid_std, precision, recall, f_score (torch-fidelity) and fid_cleanfid (clean-fid) of
    a folder of generated PNGs against a reference set of the same size (cached statistics)."""
    n = _equal_count(generated, reference)
    metrics = _torch_fidelity_metrics(str(generated), str(reference.images), n, space, batch_size, seed,
                                      input2_cache_name=REFERENCE_CACHE_NAME, cache_root=str(reference.cache_root),
                                      cache=True)
    mu, sigma = reference.cleanfid_stats()
    metrics["fid_cleanfid"] = cleanfid_distance(cleanfid_features(generated, space.module(), batch_size), mu, sigma)
    return metrics


def fid_value(generated: str | Path, reference: Reference, space: FeatureSpace, batch_size: int = 128) -> float:
    """torch-fidelity's FID alone (what ``fid_metrics`` reports as ``fid``), against a reference
    set of the same size (cached statistics)."""
    _equal_count(generated, reference)
    out = torch_fidelity.calculate_metrics(
        input1=str(generated), input2=str(reference.images), fid=True, batch_size=batch_size,
        **space.torch_fidelity_kwargs(), input2_cache_name=REFERENCE_CACHE_NAME,
        cache_root=str(reference.cache_root), cache=True)
    return out[torch_fidelity.KEY_METRIC_FID]


def _equal_count(generated: str | Path, reference: Reference) -> int:
    n = count_pngs(generated)
    if n != reference.n:
        raise ValueError(f"{generated} holds {n} images, the reference set {reference.n}: FID compares equal counts")
    return n


def compare_folders(folder1: str | Path, folder2: str | Path, space: FeatureSpace, batch_size: int = 128,
                    seed: int = 0) -> dict[str, float]:
    """The same metrics between two folders of PNGs (folder1 generated, folder2 real), nothing cached:
    clean-fid through its folder-to-folder ``compute_fid``."""
    n1, n2 = count_pngs(folder1), count_pngs(folder2)
    if n1 != n2:
        raise ValueError(f"{folder1} holds {n1} images, {folder2} {n2}: FID compares equal counts")
    check_samples(n1)
    metrics = _torch_fidelity_metrics(str(folder1), str(folder2), n1, space, batch_size, seed, cache=False)
    with _quiet_cleanfid():
        metrics["fid_cleanfid"] = float(cleanfid.compute_fid(
            str(folder1), str(folder2), mode="clean", num_workers=0, batch_size=batch_size, device=_device(),
            custom_feat_extractor=CleanFidExtractor(space.module()), custom_fn_resize=_no_resize, verbose=False))
    return metrics
