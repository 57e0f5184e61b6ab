"""What the modality-prediction models share: query source counts, output names, best weights."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from lightning.pytorch.callbacks import Callback
from mudata import MuData

from scfound._utils import check_expression, get_matrix, layer_name

from ._mudata import get_modality_matrix
from ._training import run_training


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

    def _train_on_split(
        self,
        keys: dict[str, type],
        *,
        max_epochs: int,
        batch_size: int,
        train_size: float,
        early_stopping: bool,
        early_stopping_patience: int,
        seed: int,
        plan_kwargs: dict[str, Any],
        validation_plan_kwargs: dict[str, Any] | None = None,
        **trainer_kwargs: Any,
    ) -> int:
        """Train on a random ``train_size`` split of the cells; the rest validates.

        With validation cells, ``validation_loss`` is computed every epoch, drives early
        stopping and the weights of the best epoch are kept (:class:`KeepBest`).

        Parameters
        ----------
        keys
            Registry keys of the minibatches and their dtypes.
        max_epochs, batch_size, train_size, early_stopping, early_stopping_patience, seed
            As in the models' ``train``.
        plan_kwargs
            Arguments of the training plan.
        validation_plan_kwargs
            Further plan arguments used only when there are validation cells.
        **trainer_kwargs
            Passed to :func:`~scfound.models.base.run_training` (``accelerator``,
            ``devices``, ``enable_progress_bar``, ``callbacks``, ...).

        Returns
        -------
        The number of training cells.
        """
        if not 0 < train_size <= 1:
            raise ValueError(f"train_size must lie in (0, 1], got {train_size}.")
        if not isinstance(batch_size, int | np.integer) or batch_size < 2:
            raise ValueError(f"batch_size must be an integer >= 2, got {batch_size!r}.")
        n = self.adata.n_obs
        order = np.random.default_rng(seed).permutation(n)
        n_train = n if train_size >= 1 else min(max(round(train_size * n), 1), n - 1)
        train_idx, val_idx = np.sort(order[:n_train]), np.sort(order[n_train:])
        if early_stopping and len(val_idx) == 0:
            raise ValueError("early_stopping needs validation cells: pass train_size < 1.")
        torch.manual_seed(seed)
        data = self._data_splitter_cls(
            self.adata_manager,
            external_indexing=[train_idx, val_idx, np.array([], dtype=np.int64)],
            batch_size=int(batch_size),
            data_and_attributes=keys,
            drop_last=False,
        )
        callbacks = list(trainer_kwargs.pop("callbacks", None) or [])
        if len(val_idx):
            plan_kwargs = (validation_plan_kwargs or {}) | plan_kwargs
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
            callbacks.append(KeepBest())
        if early_stopping:
            trainer_kwargs.update(
                early_stopping=True,
                early_stopping_monitor="validation_loss",
                early_stopping_patience=early_stopping_patience,
            )
        plan = self._training_plan_cls(self.module, **plan_kwargs)
        run_training(self, plan, data, max_epochs=max_epochs, callbacks=callbacks, **trainer_kwargs)
        return n_train
