"""Training a stage-0 autoencoder with Lightning (kept out of ``stage0`` so that looking up a
tokenizer's directory does not import Lightning)."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from harness import progress
from harness.data.datasets import to_float
from harness.tokenizers.autoencoder import Autoencoder


class TokenizerModule(L.LightningModule):
    """Reconstruction (MSE) + KL (continuous) or commitment (discrete)."""

    def __init__(self, model: Autoencoder, lr: float, kl_weight: float, steps: int):
        super().__init__()
        self.model, self.lr, self.kl_weight, self.steps = model, lr, kl_weight, steps

    def training_step(self, batch, _):
        x = to_float(batch[0])
        recon, aux = self.model(x)
        rec = F.mse_loss(recon, x)
        loss = rec + (self.kl_weight * aux["kl"] if "kl" in aux else aux["commit"])
        self.log("tokenizer/recon_mse", rec, prog_bar=True)
        if "perplexity" in aux:
            self.log("tokenizer/perplexity", aux["perplexity"], prog_bar=True)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, self.lr, total_steps=self.steps,
                                                    pct_start=0.05)
        return [opt], [{"scheduler": sched, "interval": "step"}]


def fit_autoencoder(model: Autoencoder, images: torch.Tensor, t: DictConfig, accelerator: str,
                    root: Path, report: Path | None = None) -> None:
    """Train ``model`` on ``images`` (uint8) with the tokenizer config ``t``; its step and loss
    go to the progress file ``report`` (harness.progress) when given."""
    module = TokenizerModule(model, t.lr, t.kl_weight, t.steps)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images),
                                         batch_size=t.batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(t.seed))
    trainer = L.Trainer(max_steps=t.steps, accelerator=accelerator, devices=1,
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=False, default_root_dir=str(root),
                        callbacks=[progress.lightning_callback(progress.Reporter(report, "train", t.steps))]
                        if report else None)
    trainer.fit(module, loader)
