"""Experiment tracking (MLflow)."""
from __future__ import annotations

import os

DEFAULT_TRACKING_URI = "sqlite:///results/mlflow.db"


def tracking_uri() -> str:
    """The MLflow store: ``MLFLOW_TRACKING_URI`` if set, else the repo's sqlite file."""
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
