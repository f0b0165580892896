"""A run's size and cost as MLflow metrics (``model/params``, ``model/train_flops``, ...).

MLflow keeps params as text, and its UI charts (the experiment's chart view: scatter, parallel
coordinates) plot each run's latest metric values: to put ``eval/fid`` against the parameter count
the count must be a metric too. The same numbers stay params (``params``, ``train_flops``, from
``info.json``; ``model.size``, ``model.token``, ``model.order``, ``model.depth`` ... from the
config), and token, order and size are also tags.

Training logs these once, at step 0, through the run's logger: they go to ``metrics.jsonl`` first
like any metric, so ``python -m harness.sync`` replays them, and a resumed run, which finds them
there, does not log them again.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PREFIX = "model/"
STEP = 0
# the model's shape: what ``model.size`` means in numbers (its ladder's depth and width)
SHAPE = ("depth", "width")


def size_metrics(info: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, float]:
    """``model/<name>``: every number of ``info`` (a run's ``info.json``: params, trainable_params,
    forward_flops, train_flops, executed_flops, num_tokens) and the model's depth and width
    (``model``: the run config's ``model`` section)."""
    values = {**dict(info), **{k: model[k] for k in SHAPE}}
    return {PREFIX + k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
