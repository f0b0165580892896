"""The LightningModule of a generator run: text encoder + aligner + generator, EMA, optimiser.

Randomness of a training step (caption dropout, masks, diffusion noise) comes from a generator
seeded by (seed, global step, rank, micro-batch), so a resumed run replays exactly what an
uninterrupted run would have done, and ranks and accumulated micro-batches draw independently;
validation uses fixed randomness (per sample in random order) so losses are comparable across sizes.
"""
from __future__ import annotations

import copy
import hashlib
import math

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from harness.config import num_tokens, scaled_head_width, to_container
from harness.models.diffloss import AdaLNBlock
from harness.models.generator import Generator, val_generator
from harness.models.transformer import Block
from harness.text.aligner import TextAligner, context_spread
from harness.text.encoders import build_text_encoder, text_feature_width


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, step: int, value: float):
        self.step, self.value = step, value
        super().__init__(f"loss is {value} at step {step}")


def build_networks(cfg: DictConfig, token_dim: int, codebook_size: int,
                   vocabulary: list[str]) -> nn.ModuleDict:
    """The trainable networks of a run: ``text`` (learned encoder, or absent), ``aligner``,
    ``generator``. A frozen Hugging Face encoder is not part of them (its features are cached)."""
    m, t = cfg.model, cfg.text
    nets = nn.ModuleDict()
    if t.encoder == "learned":
        nets["text"] = build_text_encoder("learned", t.max_len, t.width, t.encoder_layers,
                                          t.heads, vocabulary)
        nets["text"].requires_grad_(bool(t.train_encoder))
        text_width = t.width
    else:
        text_width = text_feature_width(t.encoder)
    nets["aligner"] = TextAligner(text_width, m.width, t.aligner_layers, m.heads, t.max_len)
    if t.lr_scale == 0:  # a frozen text path: no gradients to compute for it
        for key in ("text", "aligner"):
            if key in nets:
                nets[key].requires_grad_(False)
    nets["generator"] = Generator(
        m.token, m.order, num_tokens(cfg), m.depth, m.width, m.heads, m.mlp_ratio,
        token_dim=token_dim, codebook_size=codebook_size, head_width=m.head_width,
        head_depth=m.head_depth, diffusion_steps=m.diffusion_steps,
        diffusion_batch_mul=m.diffusion_batch_mul, learn_sigma=m.learn_sigma,
        diffusion_prediction=m.diffusion_prediction, mask_ratio_min=m.mask_ratio_min,
        mask_ratio_std=m.mask_ratio_std, mask_ratio_uniform=m.mask_ratio_uniform,
        mask_ratio_per_sample=m.mask_ratio_per_sample,
        final_norm=m.final_norm, logits_init_std=m.logits_init_std)
    return nets


def decayed(name: str, param: nn.Parameter) -> bool:
    """Whether AdamW decays a parameter, as MAR's ``add_weight_decay`` decides (util/misc.py):
    matrices and embeddings are decayed (learned positions, the mask, start and null tokens
    included), vectors (biases, norm scales) are not, and nothing of the diffusion head (MAR:
    "no weight decay on bias, norm layers, and diffloss MLP"). The Fluid paper gives AdamW and its
    decay rate, not the groups; MAR's code is the reference."""
    return param.ndim >= 2 and not name.endswith(".bias") and "diffloss" not in name.split(".")


def compile_generator(generator: Generator) -> None:
    """torch.compile, in place, what a training step of ``generator`` spends its time in: each
    transformer block and the diffusion head's denoiser (module by module, so parameter names,
    checkpoints and FSDP units stay as they are; the step's randomness is drawn outside them)."""
    for block in generator.blocks:
        block.compile()
    if generator.token == "continuous":  # in random order its rows vary with each step's mask ratio
        generator.diffloss.net.compile(dynamic=generator.order == "random")


def step_seed(seed: int, step: int, rank: int = 0, micro: int = 0) -> int:
    """The seed of micro-batch ``micro`` of optimizer step ``step`` on rank ``rank``: each draws its
    own caption dropout, masks and diffusion noise. Rank 0's first micro-batch keeps the seed of
    (seed, step) alone, so a run on one process without accumulation draws what it always did;
    every other one hashes all four (64 bits: no collision with another step's seed in practice)."""
    base = seed * 1_000_003 + step
    if rank == 0 and micro == 0:
        return base
    return int.from_bytes(hashlib.sha256(f"{seed}:{step}:{rank}:{micro}".encode()).digest()[:8], "big")


def mup_multipliers(cfg: DictConfig, nets: nn.ModuleDict, token_dim: int, codebook_size: int,
                    vocabulary: list[str]) -> dict[str, float]:
    """muP's learning-rate rule for Adam (Tensor Programs V): a weight matrix whose fan-in grows
    with the model's width (the hidden and output matrices of the generator, the aligner and the
    diffusion head) takes ``train.lr`` x base fan-in / fan-in; everything whose fan-in does not
    grow (token embeddings, projections from the token channels, text features or time
    frequencies, biases, norms, position embeddings) keeps ``train.lr``; with
    ``train.mup_scale_head=false`` so do the diffusion head's own matrices. Which fan-ins grow is
    read, as muP's base shapes are, by building the same networks at ``train.lr_base_width`` (on
    the meta device: no memory) and comparing. Returns parameter name -> multiplier."""
    m, base = cfg.model, cfg.train.lr_base_width
    # a head whose width follows the model's (head_width_ratio) scales with it, unless
    # train.mup_scale_head=false; a set head width does not
    follows = cfg.train.mup_scale_head and m.head_width == scaled_head_width(m.width, m.head_width_ratio)
    small = OmegaConf.merge(cfg, {"model": {
        "width": base, "heads": 1,
        "head_width": scaled_head_width(base, m.head_width_ratio) if follows else m.head_width}})
    with torch.device("meta"):
        base_nets = build_networks(small, token_dim, codebook_size, vocabulary)
    base_shapes = {n: p.shape for n, p in base_nets.named_parameters()}
    linear = {f"{name}.weight" for name, mod in nets.named_modules() if isinstance(mod, nn.Linear)}
    out = {}
    for n, p in nets.named_parameters():
        fan_in, base_in = p.shape[-1], base_shapes[n][-1]
        out[n] = base_in / fan_in if n in linear and fan_in != base_in else 1.0
    return out


def peak_lr(cfg: DictConfig) -> float:
    """The run's peak learning rate: ``train.lr``, or with ``train.lr_base_width`` scaled by
    base width / model width. Adam's update of a hidden matrix changes its output in proportion to
    the fan-in, so a width-independent lr lets wider models take larger steps in function space:
    on the cpu ladder at lr 3e-3 the width-192 model learned slower per step than the width-64 one
    and its text aligner's context collapsed, at 1e-3 neither (docs/results/cpu-study/README.md)."""
    t = cfg.train
    if t.lr_base_width and t.lr_width_rule == "all":
        return t.lr * t.lr_base_width / cfg.model.width
    return t.lr  # (with lr_width_rule=mup the width enters per parameter: mup_multipliers)


def next_captions(batch: dict) -> dict:
    """The batch with sample i's caption (or cached text features) replaced by sample i+1's."""
    out = dict(batch)
    for key in ("caption", "text_feats", "text_mask"):
        if key in batch:
            v = batch[key]
            out[key] = v[1:] + v[:1] if isinstance(v, list) else torch.roll(v, -1, dims=0)
    return out


def counted_parameters(nets: nn.ModuleDict) -> int:
    """Parameters the scaling study counts: generator + aligner (not the text encoder)."""
    return sum(p.numel() for k in ("aligner", "generator") for p in nets[k].parameters())


class EMA(nn.ModuleDict):
    """The EMA copy of the networks (same keys). Its ``forward(fn, *args)`` runs ``fn(self, *args)``
    so that, under FSDP, where it is a unit of its own, its parameters are gathered first; its
    sharding then mirrors the trained networks' (same layout), so the EMA update stays elementwise."""

    def forward(self, fn, *args):
        return fn(self, *args)


# FSDP units: every transformer and diffusion-head block, and the EMA (see ``EMA``).
FSDP_WRAP = (Block, AdaLNBlock, EMA)
_FSDP_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def _clean(name: str) -> str:
    for prefix in _FSDP_PREFIXES:
        name = name.replace(prefix, "")
    return name


class GeneratorModule(L.LightningModule):
    def __init__(self, cfg: DictConfig, token_dim: int, codebook_size: int, vocabulary: list[str]):
        super().__init__()
        self.cfg = cfg
        self.nets = build_networks(cfg, token_dim, codebook_size, vocabulary)
        t = cfg.train
        self._lr_mult = (mup_multipliers(cfg, self.nets, token_dim, codebook_size, vocabulary)
                         if t.lr_base_width and t.lr_width_rule == "mup" else {})  # before compile
        self.ema = EMA(copy.deepcopy(self.nets)).requires_grad_(False)
        if cfg.train.compile:  # the trained networks only: the EMA (validation, sampling) runs eagerly
            compile_generator(self.nets["generator"])
        # weight decay by name, decided on the unsharded shapes (FSDP flattens parameters to 1-D)
        self._decayed = {n for n, p in self.nets.named_parameters() if decayed(n, p)}
        self.save_hyperparameters({"config": to_container(cfg)}, logger=False)

    def forward(self, batch: dict, index: int, first: int, probe: str = "loss") -> Tensor:
        """A validation probe of the EMA networks on batch ``index`` of the val set, which starts at
        its sample ``first``, with fixed randomness (``_ema_probe``). Under FSDP it is called on the
        sharded root so parameters are gathered."""
        return self.ema(self._ema_probe, batch, index, first, probe)

    def _ema_probe(self, ema: nn.ModuleDict, batch: dict, index: int, first: int, probe: str) -> Tensor:
        """``probe``: ``loss``, the validation loss (random order: per-sample mask ratios and
        randomness, ``Generator.validation_loss``; raster: the batch's own seed); ``shuffled``, the
        same loss with every sample reading the next sample's caption (the same masks and noise, so
        its excess over ``loss`` is the caption gain); ``null``, the same loss with every sample
        reading the null caption (classifier-free guidance's unconditional branch: its excess over
        ``loss`` is what the captions tell the model, without the cost of a caption that contradicts
        the visible tokens, which ``shuffled`` also carries); ``spread``, how much the text context
        varies between the batch's captions (``context_spread``; ~0 when the text path has
        collapsed to one context for every caption); ``losses``, each sample's loss with the
        randomness a batch of that sample alone at ``index = first = j`` draws
        (``Generator.sample_losses``), so per-sample probes can run in batches."""
        if probe == "shuffled":
            batch = next_captions(batch)
        drop = torch.ones(batch["tokens"].shape[0], dtype=torch.bool, device=self.device) if probe == "null" else None
        context, cmask = self.context(ema, batch, drop)
        if probe == "spread":
            return context_spread(context, cmask)
        generator = ema["generator"]
        if probe == "losses":
            return generator.sample_losses(batch["tokens"], context, cmask, first)
        if generator.order == "random":
            return generator.validation_loss(batch["tokens"], context, cmask, first)
        g = val_generator(index, self.device)  # the batch's own seed, as sample_losses seeds a sample
        return generator.loss(batch["tokens"], context, cmask, generator=g)

    # ---- text -------------------------------------------------------------------------------
    def text_features(self, nets: nn.ModuleDict, batch: dict) -> tuple[Tensor, Tensor]:
        if "text" in nets:
            ids, mask = nets["text"].tokenize(batch["caption"])
            ids, mask = ids.to(self.device), mask.to(self.device)
            return nets["text"](ids, mask), mask
        return batch["text_feats"].float(), batch["text_mask"].bool()

    def context(self, nets: nn.ModuleDict, batch: dict, drop: Tensor | None = None):
        feats, mask = self.text_features(nets, batch)
        return nets["aligner"](feats, mask, drop)

    def step_generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    # ---- steps -------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        # the micro-batch within the step: Lightning steps the optimizer after every
        # accumulate_grad_batches-th batch_idx (and harness.train.run checkpoints only there, so a
        # resumed run keeps this phase)
        micro = batch_idx % self.cfg.train.accumulate_grad_batches
        g = self.step_generator(step_seed(self.cfg.train.seed, self.global_step, self.global_rank, micro))
        b = batch["tokens"].shape[0]
        drop = torch.rand(b, generator=g, device=self.device) < self.cfg.text.dropout_prob
        context, cmask = self.context(self.nets, batch, drop)
        loss = self.nets["generator"].loss(batch["tokens"], context, cmask, generator=g)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(self.global_step, loss.item())
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        """Step, then update the EMA — here rather than in a batch-end hook so that a checkpoint
        taken by a callback at the end of this batch already holds this step's EMA."""
        super().optimizer_step(*args, **kwargs)
        self.update_ema()

    def update_ema(self) -> None:
        step = self.global_step
        decay = min(self.cfg.train.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pl in zip(self.ema.parameters(), self.nets.parameters()):
                pe.lerp_(pl, 1 - decay)
            for be, bl in zip(self.ema.buffers(), self.nets.buffers()):
                be.copy_(bl)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by global norm; under FSDP (whose Lightning precision plugin refuses norm clipping)
        through the sharded root's ``clip_grad_norm_``, which reduces the norm across ranks."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        root = self.trainer.model
        if isinstance(root, FullyShardedDataParallel):
            if self.cfg.train.grad_clip:
                root.clip_grad_norm_(self.cfg.train.grad_clip)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        t = self.cfg.train
        # one group per (lr, weight decay): the text path's lr scale, muP's per-matrix multiplier
        by_setting: dict[tuple[float, float], list] = {}
        for n, p in self.nets.named_parameters():
            if not p.requires_grad:
                continue
            n = _clean(n)
            lr = (peak_lr(self.cfg) * self._lr_mult.get(n, 1.0)
                  * (self.cfg.text.lr_scale if n.startswith(("text.", "aligner.")) else 1.0))
            by_setting.setdefault((lr, t.weight_decay if n in self._decayed else 0.0), []).append(p)
        groups = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in by_setting.items()]
        opt = torch.optim.AdamW(groups, lr=peak_lr(self.cfg), betas=(t.beta1, t.beta2),
                                fused=self.device.type == "cuda")

        def schedule(step: int) -> float:
            """Linear warm-up, then constant (MAR) or cosine decay to 0.1x at ``train.steps``."""
            if step < t.warmup_steps:
                return (step + 1) / t.warmup_steps
            if t.lr_schedule == "constant":
                return 1.0
            progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return [opt], [{"scheduler": sched, "interval": "step"}]
