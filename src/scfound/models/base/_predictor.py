"""What the modality-prediction models share: query source counts, output names, best weights."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from lightning.pytorch.callbacks import Callback
from mudata import MuData

from scfound._utils import check_expression, get_matrix, layer_name

from ._mudata import get_modality_matrix


class KeepBest(Callback):
    """Keep the module weights of the epoch with the lowest ``monitor``; restore them at the end.

    Parameters
    ----------
    monitor
        The logged metric to minimise.
    """

    def __init__(self, monitor: str = "validation_loss"):
        self.monitor, self.best, self.state = monitor, float("inf"), None

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and float(value) < self.best:
            self.best = float(value)
            self.state = copy.deepcopy(pl_module.module.state_dict())

    def on_train_end(self, trainer, pl_module) -> None:
        if self.state is not None:
            pl_module.module.load_state_dict(self.state)


class ModalityPredictorMixin:
    """Query handling of a model that predicts modality ``target`` from modality ``source``.

    The model class sets ``source`` (a modality kind) and has ``source_mod`` / ``target_mod``
    (the names of those modalities in its registered MuData).
    """

    source: str
    source_mod: str
    target_mod: str

    @property
    def target_names(self) -> pd.Index:
        """Names of the target features (the columns of :meth:`predict`)."""
        return self.adata.mod[self.target_mod].var_names.copy()

    def _obs_names(self, adata: AnnData | MuData | None) -> pd.Index:
        if adata is None:
            return self.adata.obs_names.copy()
        return adata.obs_names.copy()

    def _source_counts(self, adata: AnnData | MuData | None, layer: str | None) -> sp.csr_matrix:
        """Source counts of ``adata`` in the model's feature order (missing features are 0)."""
        if adata is None:
            return sp.csr_matrix(
                get_modality_matrix(self.adata_manager, self.source), dtype=np.float32
            )
        if isinstance(adata, MuData):
            if self.source_mod not in adata.mod:
                raise KeyError(
                    f"the MuData has no modality {self.source_mod!r} (the model's {self.source} "
                    f"source); modalities: {list(adata.mod)}."
                )
            adata = adata.mod[self.source_mod]
        if not isinstance(adata, AnnData):
            raise TypeError(f"adata must be an AnnData or a MuData, got {type(adata).__name__}.")
        X = get_matrix(adata, layer)
        where = layer_name(layer)
        check_expression(X, where, counts=True)
        features = self.adata.mod[self.source_mod].var_names
        position = features.get_indexer(adata.var_names)
        found = position >= 0
        n_found = int(found.sum())
        if n_found == 0:
            raise ValueError(
                f"adata has none of the model's {len(features)} {self.source} features "
                f"(e.g. {list(features[:3])}; adata has e.g. {list(adata.var_names[:3])}): "
                "match the feature names (symbols vs IDs) first."
            )
        if n_found < len(features):
            warnings.warn(
                f"adata has {n_found} of the model's {len(features)} {self.source} features; "
                f"the other {len(features) - n_found} are read as 0, which lowers the quality "
                "of the predictions.",
                UserWarning,
                stacklevel=3,
            )
        X = sp.csr_matrix(X, dtype=np.float32)[:, np.flatnonzero(found)]
        cols = position[found]
        out = sp.csr_matrix((X.data, cols[X.indices], X.indptr), shape=(X.shape[0], len(features)))
        out.sort_indices()
        return out
