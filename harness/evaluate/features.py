"""The shapes world's FID feature space: a small CNN trained to read scene attributes.

Inception features mean little on 32x32 renders of flat shapes, so for the shapes world FID is
measured, as FID on MNIST is with a LeNet, in the penultimate layer of a network trained on real
renders (train split) to predict what a caption could state about a scene:
  shape_count   objects of each shape, 0..4               3 heads x 5 classes
  color_count   objects of each colour, 0..4              6 heads x 5 classes
  pair          whether a (shape, colour) object is there 18 binary
  cell          whether an object centre lies in a cell   9 binary (3 x 3 grid)
Its accuracy on the test split is recorded in ``meta.json``.

The net is a stage-0 artifact: ``results/stage0/features-<hash>/`` (``model.pt`` + ``meta.json``),
keyed by the resolution and the :class:`FeatureSpec`, built in a ``.partial`` folder under a file
lock and renamed into place, so it exists complete or not at all and concurrent jobs train it once.
"""
from __future__ import annotations

import dataclasses
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from harness import progress
from harness.config import config_hash
from harness.data.shapes import COLORS, MAX_OBJECTS, SHAPES, Scene, ShapesWorld, render
from harness.io import build_once, read_json, write_json

GRID = 3  # position bins per axis
COLOR_NAMES = tuple(COLORS)
# name -> (number of heads, classes per head); 2 classes means a binary (sigmoid) head
HEADS: dict[str, tuple[int, int]] = {
    "shape_count": (len(SHAPES), MAX_OBJECTS + 1),
    "color_count": (len(COLOR_NAMES), MAX_OBJECTS + 1),
    "pair": (len(SHAPES) * len(COLOR_NAMES), 2),
    "cell": (GRID * GRID, 2),
}


@dataclass(frozen=True)
class FeatureSpec:
    """Architecture and training budget of the feature net (its stage-0 key)."""

    channels: tuple[int, ...] = (32, 64, 128)
    dim: int = 64
    train_images: int = 8192
    test_images: int = 1024
    steps: int = 800
    batch_size: int = 128
    lr: float = 3e-3
    seed: int = 0


DEFAULT_SPEC = FeatureSpec()


def seeded(seed: int) -> FeatureSpec:
    """The default net's spec trained with another seed (FID's other nets: ``FID_NET_SEEDS``)."""
    return dataclasses.replace(DEFAULT_SPEC, seed=seed)


def scene_targets(scene: Scene) -> dict[str, np.ndarray]:
    """The attribute targets of one scene (int64 class indices, or 0/1 for binary heads)."""
    out = {name: np.zeros(n, np.int64) for name, (n, _) in HEADS.items()}
    for o in scene.objects:
        s, c = SHAPES.index(o.shape), COLOR_NAMES.index(o.color)
        out["shape_count"][s] += 1
        out["color_count"][c] += 1
        out["pair"][s * len(COLOR_NAMES) + c] = 1
        col, row = (min(int(v * GRID), GRID - 1) for v in (o.cx, o.cy))
        out["cell"][row * GRID + col] = 1
    return out


def render_split(split: str, n: int, resolution: int, seed: int) -> tuple[Tensor, dict[str, Tensor]]:
    """``n`` renders of a shapes-world split (uint8 N,3,H,W) and their stacked targets."""
    world = ShapesWorld(split, n, resolution, seed)
    images, targets = [], {k: [] for k in HEADS}
    for i in tqdm(range(n), desc=f"render {split}", leave=False, mininterval=2):
        scene = world.scene(i)
        images.append(render(scene, resolution))
        for k, v in scene_targets(scene).items():
            targets[k].append(v)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, {k: torch.from_numpy(np.stack(v)) for k, v in targets.items()}


class FeatureNet(nn.Module):
    """Strided 3x3 convolutions -> pooled 4x4 map -> ``dim`` features -> attribute logits.

    BatchNorm matters: without it shape counts reach ~75% instead of ~98% in the same steps."""

    def __init__(self, channels: tuple[int, ...] = DEFAULT_SPEC.channels, dim: int = DEFAULT_SPEC.dim):
        super().__init__()
        layers, width = [], 3
        for c in channels:
            layers += [nn.Conv2d(width, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.GELU()]
            width = c
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.proj = nn.Linear(width * 16, dim)
        self.head = nn.Linear(dim, sum(n * (1 if k == 2 else k) for n, k in HEADS.values()))
        # standardisation of the FID features on real train images, set after training
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))

    def embed(self, images: Tensor) -> Tensor:
        """Penultimate activations (N, dim) of images given as (N, 3, H, W) values in [0, 255]."""
        x = images.to(self.proj.weight.dtype) / 127.5 - 1.0
        return self.proj(self.trunk(x))

    def features(self, images: Tensor) -> Tensor:
        """The FID features: penultimate activations standardised to zero mean, unit variance per
        dimension on real images, so FID and KID's polynomial kernel see every dimension at O(1)."""
        return (self.embed(images) - self.feature_mean) / self.feature_std

    @torch.no_grad()
    def standardise(self, images: Tensor, batch_size: int = 256) -> None:
        """Set the feature standardisation from real images."""
        self.eval()
        acts = torch.cat([self.embed(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
        self.feature_mean.copy_(acts.mean(0))
        self.feature_std.copy_(acts.std(0).clamp_min(1e-6))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Logits per attribute: (N, heads, classes) for counts, (N, heads) for binary heads."""
        logits = self.head(F.gelu(self.embed(images)))
        out, start = {}, 0
        for name, (n, k) in HEADS.items():
            width = n * (1 if k == 2 else k)
            chunk = logits[:, start:start + width]
            out[name] = chunk if k == 2 else chunk.reshape(-1, n, k)
            start += width
        return out


def attribute_loss(logits: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
    loss = logits["shape_count"].new_zeros(())
    for name, (_, k) in HEADS.items():
        if k == 2:
            loss = loss + F.binary_cross_entropy_with_logits(logits[name], targets[name].float())
        else:
            loss = loss + F.cross_entropy(logits[name].flatten(0, 1), targets[name].flatten())
    return loss


def _predictions(logits: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: (logits[name] > 0).long() if k == 2 else logits[name].argmax(-1)
            for name, (_, k) in HEADS.items()}


@torch.no_grad()
def attribute_accuracy(net: FeatureNet, images: Tensor, targets: dict[str, Tensor],
                       batch_size: int = 256) -> dict[str, float]:
    """Per-head accuracy of each attribute group, and ``scene``: every count of the image right."""
    net.eval()
    preds = {k: [] for k in HEADS}
    for i in range(0, len(images), batch_size):
        for k, v in _predictions(net(images[i:i + batch_size])).items():
            preds[k].append(v)
    right = {k: torch.cat(v) == targets[k] for k, v in preds.items()}
    acc = {f"{k}_accuracy": v.float().mean().item() for k, v in right.items()}
    acc["scene_accuracy"] = (right["shape_count"].all(1) & right["color_count"].all(1)).float().mean().item()
    return acc


@contextmanager
def _one_thread():
    """Train on one intra-op thread: these small convolutions gain little from a second core, run
    4-5x slower when the cores are shared with other jobs, and the result no longer depends on
    the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_feature_net(spec: FeatureSpec, resolution: int,
                      report: Path | None = None) -> tuple[FeatureNet, dict]:
    """Train the net on train-split renders; returns it with its test-split accuracy and timing
    (step and loss to the progress file ``report`` when given)."""
    with _one_thread():
        return _train(spec, resolution, report)


def _train(spec: FeatureSpec, resolution: int, report: Path | None = None) -> tuple[FeatureNet, dict]:
    start = time.time()
    torch.manual_seed(spec.seed)
    images, targets = render_split("train", spec.train_images, resolution, spec.seed)
    test_images, test_targets = render_split("test", spec.test_images, resolution, spec.seed)
    render_seconds = time.time() - start
    net = FeatureNet(spec.channels, spec.dim)
    opt = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=1e-4)
    warmup = max(1, spec.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / spec.steps))))
    g = torch.Generator().manual_seed(spec.seed)
    net.train()
    bar = tqdm(range(spec.steps), desc="feature net", leave=False, mininterval=2)
    reporter = progress.Reporter(report, "train", spec.steps) if report else None
    for step in bar:
        idx = torch.randint(len(images), (spec.batch_size,), generator=g)
        loss = attribute_loss(net(images[idx]), {k: v[idx] for k, v in targets.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if reporter is not None and reporter.due(step + 1):
            reporter.update(step + 1, loss=loss.item())
    net.standardise(images)
    meta = {"spec": dataclasses.asdict(spec), "resolution": resolution, "final_loss": loss.item(),
            "test_split": "test", **attribute_accuracy(net, test_images, test_targets),
            "render_seconds": render_seconds, "train_seconds": time.time() - start - render_seconds}
    return net, meta


def feature_dir(resolution: int, results_dir: str | Path, spec: FeatureSpec = DEFAULT_SPEC) -> Path:
    key = config_hash({"resolution": resolution, "spec": dataclasses.asdict(spec)})
    return Path(results_dir) / "stage0" / f"features-{key}"


def ensure_feature_net(resolution: int, results_dir: str | Path, spec: FeatureSpec = DEFAULT_SPEC) -> Path:
    """Train (or find) the feature net for ``resolution``; returns its stage-0 directory."""

    def build(tmp: Path) -> None:
        net, meta = train_feature_net(spec, resolution, progress.beside(final))
        torch.save(net.state_dict(), tmp / "model.pt")
        write_json(tmp / "meta.json", meta)

    final = feature_dir(resolution, results_dir, spec)
    return build_once(final, build)


def load_feature_net(path: str | Path) -> tuple[FeatureNet, dict]:
    """The trained net of a stage-0 feature directory (eval mode, frozen) and its meta."""
    path = Path(path)
    meta = read_json(path / "meta.json")
    spec = meta["spec"]
    net = FeatureNet(tuple(spec["channels"]), spec["dim"])
    net.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    return net.eval().requires_grad_(False), meta
