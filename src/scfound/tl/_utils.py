"""Bookkeeping shared by the ``tl`` functions."""

from __future__ import annotations

from typing import Any

import numpy as np
from scvi.model.base import BaseModelClass


def training_summary(model: BaseModelClass) -> dict[str, Any]:
    """Final losses and epochs of a trained model (empty when it was not trained here)."""
    history = getattr(model, "history_", None) or {}
    out: dict[str, Any] = {}
    for key in ("train_loss", "validation_loss"):
        if key in history and len(history[key]):
            out[f"final_{key}"] = float(np.asarray(history[key].iloc[-1, 0]))
            out["epochs"] = len(history[key])
    return out
