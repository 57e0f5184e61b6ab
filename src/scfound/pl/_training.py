"""Training curves of scvi-tools models."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from scfound._docs import doc_params, doc_show_save

from ._utils import finish_figure

DEFAULT_KEYS = ("train_loss", "validation_loss")


@doc_params(show_save=doc_show_save)
def training_curves(  # noqa: D417 - show and save are filled in by doc_params
    history: Any,
    *,
    keys: str | Sequence[str] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Loss curves against the epoch.

    Parameters
    ----------
    history
        A trained scvi-tools model (its ``.history`` is used) or its history itself: a mapping
        from a logged key to a :class:`~pandas.DataFrame` with one column, indexed by epoch.
    keys
        Logged keys to plot in addition to ``train_loss`` and ``validation_loss``, e.g.
        ``"reconstruction_loss_train"``. A key that was logged per step and epoch can be given
        without its ``_epoch`` suffix. Default keys missing from the history are skipped
        silently, requested ones with a warning.
    ax
        Axes to draw into; by default a new figure is created.
    {show_save}

    Returns
    -------
    The figure holding the plot.

    Raises
    ------
    ValueError
        If the model was not trained or none of the keys is in the history.

    Examples
    --------
    >>> import scfound as sf
    >>> sf.SpaFormer.setup_anndata(adata, layer="counts", group_key="spatial_tile")
    >>> model = sf.SpaFormer(adata)
    >>> model.train(max_epochs=50)
    >>> sf.pl.training_curves(model)
    """
    logs = _as_history(history)
    requested = [keys] if isinstance(keys, str) else list(keys or [])
    wanted = list(dict.fromkeys([*DEFAULT_KEYS, *requested]))
    found = {key: name for key in wanted if (name := _resolve(logs, key)) is not None}
    absent = [key for key in requested if key not in found]
    if absent:
        warnings.warn(
            f"keys not in the training history, skipped: {absent} (available: {list(logs)}).",
            UserWarning,
            stacklevel=2,
        )
    if not found:
        raise ValueError(
            f"nothing to plot: none of {wanted} is in the training history "
            f"(available: {list(logs)}); pass `keys=`."
        )

    owned = ax is None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.0, 3.5), layout="constrained")
    else:
        fig = ax.figure
    for key, name in found.items():
        epochs, values = _series(logs[name], name)
        ax.plot(epochs, values, marker="o" if len(values) < 20 else None, ms=3, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(fontsize="small", frameon=False)
    ax.grid(alpha=0.3)
    return finish_figure(fig, show=show, save=save, owned=owned)


def _as_history(history: Any) -> Mapping[str, Any]:
    """The history mapping of a model or the mapping itself."""
    if not isinstance(history, Mapping):
        if not hasattr(history, "history"):
            raise TypeError(
                "history must be a trained scvi-tools model or its `.history` dict, "
                f"got {type(history).__name__}."
            )
        history = history.history
        if history is None:
            raise ValueError("the model has no training history; train it first.")
    if not history:
        raise ValueError("the training history is empty; nothing to plot.")
    return history


def _resolve(logs: Mapping[str, Any], key: str) -> str | None:
    """Name under which ``key`` was logged (as is, or with Lightning's ``_epoch`` suffix)."""
    for name in (key, f"{key}_epoch"):
        if name in logs and len(logs[name]) > 0:
            return name
    return None


def _series(frame: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Epochs and float values of one logged key."""
    if isinstance(frame, pd.DataFrame):
        column = frame[name] if name in frame.columns else frame.iloc[:, 0]
    else:
        column = pd.Series(frame)
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    index = column.index
    epochs = (
        index.to_numpy(dtype=float)
        if pd.api.types.is_numeric_dtype(index)
        else np.arange(len(values), dtype=float)
    )
    return epochs, values
