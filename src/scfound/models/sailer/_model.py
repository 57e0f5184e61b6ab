"""SAILER: confounder-invariant representations of scATAC-seq (Cao et al., Bioinformatics 2021)."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField, NumericalJointObsField
from scvi.dataloaders import DataSplitter
from scvi.model.base import BaseModelClass
from scvi.module.base import LossOutput
from scvi.train import TrainingPlan, TrainRunner

from scfound._utils import check_expression, check_genes_present, get_matrix, layer_name
from scfound._validate import check_obs_keys

from ..base import (
    SafeSaveMixin,
    adam_plan,
    check_genes,
    check_model_data,
    register_fields,
    restore_on_error,
    run_training,
)
from ._module import SAILERModule

logger = logging.getLogger(__name__)

#: rows read at a time when statistics are computed from the registered matrix
_BLOCK = 10_000


class SAILERTrainingPlan(TrainingPlan):
    """:class:`~scvi.train.TrainingPlan` with SAILER's annealing of the KL weight ``beta``.

    ``beta`` is 0 during ``warmup_epochs`` (reconstruction only), then follows a cyclical
    schedule (Fu et al., 2019): ``n_cycles`` cycles over the remaining epochs, each a linear
    ramp from 0 to 1 over its first half and 1 over its second half. ``beta`` is evaluated once
    per epoch, as the authors do, and multiplies both the prior KL and the MI penalty.

    Parameters
    ----------
    module
        The :class:`~scfound.models.sailer._module.SAILERModule`.
    max_epochs
        Epochs of the run (sets the cycle length).
    warmup_epochs
        Reconstruction-only epochs first.
    n_cycles
        Annealing cycles after the warm-up.
    lr_decay
        Factor applied to the learning rate after every epoch (authors: 0.995).
    **kwargs
        Passed to :class:`~scvi.train.TrainingPlan`.
    """

    def __init__(
        self,
        module: SAILERModule,
        *,
        max_epochs: int,
        warmup_epochs: int,
        n_cycles: int,
        lr_decay: float = 0.995,
        **kwargs,
    ):
        # set first: scvi-tools' constructor reads ``kl_weight``
        self.warmup_epochs, self.n_cycles, self.lr_decay = warmup_epochs, n_cycles, lr_decay
        self.cycle_epochs = max(1, math.ceil((max_epochs - warmup_epochs) / max(n_cycles, 1)))
        super().__init__(module, **kwargs)

    def beta(self, epoch: int) -> float:
        """The annealing weight at ``epoch`` (0-based)."""
        if epoch < self.warmup_epochs:
            return 0.0
        if self.cycle_epochs == 1:
            return 1.0
        t = (epoch - self.warmup_epochs) % self.cycle_epochs
        return min(1.0, 2.0 * t / self.cycle_epochs)

    @property
    def kl_weight(self) -> torch.Tensor:
        """``beta`` of the current epoch."""
        return torch.tensor(self.beta(self.current_epoch), device=self.device)

    @torch.no_grad()
    def compute_and_log_metrics(self, loss_output: LossOutput, metrics: dict, mode: str) -> None:
        """scvi-tools' metric logging, under ``no_grad`` instead of ``inference_mode``.

        Under DDP, Lightning averages the logged values across processes in place at the end
        of an epoch, which fails on the inference tensors scvi-tools' version (decorated with
        ``torch.inference_mode``) logs; the computation is otherwise the same.
        """
        TrainingPlan.compute_and_log_metrics.__wrapped__(self, loss_output, metrics, mode)

    def configure_optimizers(self):
        """Adam as scvi-tools' plan, with the per-epoch exponential learning-rate decay."""
        config = super().configure_optimizers()
        if self.lr_decay != 1.0 and "lr_scheduler" not in config:
            config["lr_scheduler"] = {
                "scheduler": torch.optim.lr_scheduler.ExponentialLR(
                    config["optimizer"], gamma=self.lr_decay
                ),
                "interval": "epoch",
            }
        return config


def _rows(X) -> list:
    """Row blocks of ``X`` (in memory or on disk) as CSR matrices."""
    return [sp.csr_matrix(X[s : s + _BLOCK]) for s in range(0, X.shape[0], _BLOCK)]


def accessibility_stats(X) -> tuple[np.ndarray, np.ndarray]:
    """Accessible peaks per cell and accessible cells per peak of a count matrix (``> 0``)."""
    per_cell, per_peak = [], np.zeros(X.shape[1], dtype=np.int64)
    for block in _rows(X):
        binary = block > 0
        per_cell.append(np.asarray(binary.sum(1)).ravel())
        per_peak += np.asarray(binary.sum(0)).ravel()
    return np.concatenate(per_cell), per_peak


def depth_stats(per_cell: np.ndarray, n_peaks: int) -> dict[str, float]:
    """The 0/1 ratio and the mean and std of the log depth of binarised profiles.

    Parameters
    ----------
    per_cell
        Accessible peaks of every cell (:func:`accessibility_stats`).
    n_peaks
        Peaks of the profiles.

    Returns
    -------
    ``pos_weight`` (inaccessible / accessible entries; 1 without accessible entries),
    ``depth_mean`` and ``depth_std`` (of ``log max(per_cell, 1)``; a std of 0 gives 1).
    """
    ones = float(per_cell.sum())
    zeros = float(per_cell.shape[0]) * n_peaks - ones
    log_depth = np.log(np.maximum(per_cell, 1.0))
    return {
        "pos_weight": zeros / ones if ones > 0 else 1.0,
        "depth_mean": float(log_depth.mean()),
        "depth_std": float(log_depth.std()) or 1.0,
    }


def check_vae_args(
    n_hidden: Sequence[int],
    n_latent: int,
    mi_weight: float,
    pos_weight: float | None,
    **weights: float,
) -> list[int]:
    """Check the arguments of the invariant VAE that SAILER and SAILERX share.

    Parameters
    ----------
    n_hidden
        Hidden widths (positive).
    n_latent
        Latent dimensions (a positive integer).
    mi_weight
        Weight of the mutual-information penalty (finite, >= 0).
    pos_weight
        Positive weight of the Bernoulli loss (> 0, or ``None``).
    **weights
        Further loss weights, by name (finite, >= 0).

    Returns
    -------
    ``n_hidden`` as a list of ints.

    Raises
    ------
    ValueError
        Naming the first argument out of range.
    """
    n_hidden = [int(h) for h in n_hidden]
    if not n_hidden or min(n_hidden) < 1:
        raise ValueError(f"n_hidden must be positive layer widths, got {n_hidden}.")
    if int(n_latent) != n_latent or n_latent < 1:
        raise ValueError(f"n_latent must be a positive integer, got {n_latent!r}.")
    for name, value in {"mi_weight": mi_weight, **weights}.items():
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    if pos_weight is not None and not pos_weight > 0:
        raise ValueError(f"pos_weight must be > 0 or None, got {pos_weight}.")
    return n_hidden


class SAILERMixin:
    """Training and mini-batch inference shared by SAILER and SAILERX.

    For a :class:`~scvi.model.base.BaseModelClass` whose module is a
    :class:`~scfound.models.sailer._module.InvariantBernoulliVAE` and whose training plan is a
    :class:`SAILERTrainingPlan`. A model defines ``_inference_adata`` (the data to run
    inference on, checked and registered) and may add arguments of its data splitter in
    ``_splitter_kwargs``.
    """

    _training_plan_cls = SAILERTrainingPlan
    _train_runner_cls = TrainRunner

    def _splitter_kwargs(self) -> dict:
        """Extra arguments of the model's data splitter (none here)."""
        return {}

    def _inference_adata(self, adata: AnnData | None) -> AnnData:
        """The data to run inference on (``None``: the model's own), checked and registered."""
        raise NotImplementedError

    # --------------------------------------------------------------- training
    def train(
        self,
        max_epochs: int | None = None,
        *,
        lr: float = 1e-3,
        weight_decay: float = 5e-4,
        batch_size: int = 128,
        warmup_epochs: int | None = None,
        n_cycles: int = 4,
        lr_decay: float = 0.995,
        train_size: float = 0.9,
        validation_size: float | None = None,
        early_stopping: bool = False,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        strategy: str = "auto",
        seed: int = 0,
        enable_progress_bar: bool | None = None,
        datasplitter_kwargs: dict | None = None,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train with the model's data splitter and a :class:`SAILERTrainingPlan`.

        Warm-up, cyclical annealing of the KL weight and per-epoch learning-rate decay.

        Parameters
        ----------
        max_epochs
            Passes over the training cells; default scvi-tools' heuristic
            ``min(400, round(20000 / n_cells * 400))`` (papers: 400).
        lr, weight_decay
            Adam settings (SAILER's authors: 1e-3, 5e-4; SAILERX's: 1e-4, 5e-4).
        batch_size
            Cells per step: the MI penalty (and SAILERX's cross-modal term) is computed within a
            step (SAILERX's authors: 200).
        warmup_epochs
            Epochs without the KL terms first (reconstruction, and SAILERX's cross-modal term);
            default ``round(max_epochs / 40)`` (the authors' 10 of 400).
        n_cycles
            Cyclical annealing cycles over the remaining epochs (authors: 4).
        lr_decay
            Learning rate factor per epoch (authors: 0.995; 1 turns it off).
        train_size, validation_size
            Fractions of cells for training and validation (the validation loss is logged as
            ``validation_loss``).
        early_stopping
            Stop when ``validation_loss`` stops improving (mind that the annealing raises the
            loss at the start of every cycle).
        accelerator, devices, strategy
            Passed to Lightning (e.g. ``strategy="ddp"`` with several devices); under DDP
            each process reads its own share of the mini-batches (scvi-tools' distributed
            sampler), also from a file on disk.
        seed
            Seed of the initial split, the shuffling and the sampling.
        enable_progress_bar
            Show the progress bar; default :attr:`scfound.settings.progress_bar`.
        datasplitter_kwargs
            Extra arguments of the data splitter (a :class:`~scvi.dataloaders.DataSplitter`).
        plan_kwargs
            Extra arguments of :class:`SAILERTrainingPlan`.
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer`.
        """
        import scvi
        from scvi.model._utils import get_max_epochs_heuristic

        if max_epochs is None:
            max_epochs = get_max_epochs_heuristic(self.adata.n_obs)
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {max_epochs}.")
        if warmup_epochs is None:
            warmup_epochs = round(max_epochs / 40)
        if not 0 <= warmup_epochs < max_epochs or warmup_epochs != int(warmup_epochs):
            raise ValueError(
                f"warmup_epochs must be an integer in [0, max_epochs), got {warmup_epochs}."
            )
        if n_cycles < 1:
            raise ValueError(f"n_cycles must be >= 1, got {n_cycles}.")
        if batch_size < 2:
            raise ValueError(
                f"batch_size must be >= 2 (the MI penalty compares cells), got {batch_size}."
            )
        scvi.settings.seed = seed
        torch.manual_seed(seed)
        splitter = self._data_splitter_cls(
            self.adata_manager,
            train_size=train_size,
            validation_size=validation_size,
            batch_size=batch_size,
            distributed_sampler="ddp" in str(strategy).lower(),
            **self._splitter_kwargs(),
            **(datasplitter_kwargs or {}),
        )
        plan_kwargs = {
            **adam_plan(lr, weight_decay, optimizer="Adam"),
            "max_epochs": max_epochs,
            "warmup_epochs": int(warmup_epochs),
            "n_cycles": n_cycles,
            "lr_decay": lr_decay,
            **(plan_kwargs or {}),
        }
        plan = self._training_plan_cls(self.module, **plan_kwargs)
        if train_size < 1:
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        run_training(
            self,
            plan,
            splitter,
            max_epochs=max_epochs,
            enable_progress_bar=enable_progress_bar,
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            early_stopping=early_stopping,
            early_stopping_monitor="validation_loss",
            **trainer_kwargs,
        )
        self.module.eval()

    # -------------------------------------------------------------- inference
    @torch.inference_mode()
    def _forward_batches(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
        fn: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], torch.Tensor],
    ) -> np.ndarray:
        """``fn(tensors, inference_outputs)`` of every mini-batch of cells, concatenated.

        Parameters
        ----------
        adata
            Data to run on (checked and registered by ``_inference_adata``; default the
            model's own).
        indices
            Cells of ``adata`` (default all).
        batch_size
            Cells per forward pass (default scvi-tools' 128).
        fn
            Maps a mini-batch and the module's inference outputs to a ``(cells, ...)`` tensor.

        Returns
        -------
        The outputs of ``fn``, rows in the order of the cells.

        Raises
        ------
        RuntimeError
            If the model is not trained.
        """
        if not self.is_trained_:
            raise RuntimeError(
                f"this {type(self).__name__} is not trained: its outputs would come from random "
                "weights. Call model.train() first (or load a trained model)."
            )
        adata = self._inference_adata(adata)
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        self.module.eval()
        out = []
        for tensors in loader:
            inference_outputs = self.module.inference(**self.module._get_inference_input(tensors))
            out.append(fn(tensors, inference_outputs).detach().float().cpu().numpy())
        return np.concatenate(out, axis=0)


class SAILER(SafeSaveMixin, SAILERMixin, BaseModelClass):
    """SAILER: a VAE for scATAC-seq whose latent space is free of read depth and batch.

    Cao, Fu, Xie (2021), *SAILER: scalable and accurate invariant representation learning for
    single-cell ATAC-seq processing and integration*, Bioinformatics 37(Suppl_1):i317.
    Peak counts are binarised; an MLP encoder (``n_hidden``, default 1000-100) maps a cell's
    profile to a ``n_latent``-dimensional Gaussian posterior; a mirrored decoder reconstructs
    the profile from ``z`` concatenated with the confounders ``c`` (standardised log read depth,
    one-hot batch, standardised continuous covariates) under a weighted Bernoulli likelihood.
    Because the decoder is given ``c``, ``z`` need not encode it; the mutual information
    ``I(z, c)`` is further penalised through its bound ``E_x KL(q(z|x) || q(z))``, estimated by
    the mean pairwise KL between the Gaussian posteriors of a mini-batch. Training starts with
    reconstruction-only epochs, then anneals the KL weight cyclically
    (:class:`SAILERTrainingPlan`).

    Differences from the authors' code (``uci-cbcl/SAILER``), on purpose:

    * the positive weight of the Bernoulli loss up-weights the accessible entries only
      (``pos_weight``); their main training loop passes it as ``weight=``, which multiplies
      every entry by 30 and leaves the 0/1 balance as it was;
    * ``pos_weight`` defaults to 1 (balanced, which is what their main loop trains with in
      effect); ``pos_weight=None`` gives the empirical ratio of 0s to 1s that the paper
      states. On held-out simulations the ratio (about 6-10 on sparse data) made the model
      overfit the accessible entries (the validation reconstruction loss rose after ~15
      epochs) and lowered the Leiden ARI (``docs/sailer.md``);
    * ``z`` is sampled with standard deviation ``exp(log var / 2)``, the one the KL terms use
      (their sampler uses ``exp(log var)``);
    * batches are one-hot (any number of them; theirs is one 0/1 column), and further continuous
      confounders can be given;
    * the loss is the per-cell form of the paper's Eq. 2.5 (means over the mini-batch), so the
      MI penalty has the weight ``lambda`` the paper states; their sums over cells next to a
      mean over pairs weaken it by the batch size;
    * it runs on CPU or GPU through scvi-tools' data loaders and training plan (theirs is
      GPU-only and fails with NumPy >= 1.24).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (cells x peaks).
    registry
        Registry of a saved model (used by :meth:`load`).
    n_latent
        Latent dimensions (paper: 10).
    n_hidden
        Hidden widths of the encoder, mirrored by the decoder (paper: ``(1000, 100)``).
    mi_weight
        ``lambda``, weight of the mutual-information penalty (paper: 1).
    pos_weight
        Weight of the accessible entries in the binary cross-entropy (default 1, balanced);
        ``None``: the ratio of inaccessible to accessible entries of the registered data, as
        the paper states.
    encoder_input
        What the encoder reads: ``"binary"`` (default, the paper) or ``"tfidf"`` (the
        log-scaled TF-IDF of the binary profile, the input of LSI); the likelihood is the
        Bernoulli of the binary profile either way.
    dropout_rate
        Dropout after every hidden layer of the encoder (default 0, as the paper).

    Examples
    --------
    >>> import scfound as sf
    >>> atac = sf.datasets.simulate_atac(preset="sim3", n_cells=2000, n_peaks=2000)
    >>> sf.SAILER.setup_anndata(atac, layer="counts", batch_key="batch")
    >>> model = sf.SAILER(atac)
    >>> model.train(max_epochs=100)
    >>> atac.obsm["X_sailer"] = model.get_latent_representation()
    """

    _module_cls = SAILERModule
    _data_splitter_cls = DataSplitter

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        n_latent: int = 10,
        n_hidden: Sequence[int] = (1000, 100),
        mi_weight: float = 1.0,
        pos_weight: float | None = 1.0,
        encoder_input: str = "binary",
        dropout_rate: float = 0.0,
    ):
        super().__init__(adata, registry)
        n_hidden = check_vae_args(n_hidden, n_latent, mi_weight, pos_weight)
        cont = self.adata_manager.get_state_registry(REGISTRY_KEYS.CONT_COVS_KEY)
        n_cont = len(cont.get("columns", [])) if cont else 0
        stats = self._data_stats(n_cont) if self.adata is not None else None
        if pos_weight is None:
            pos_weight = stats["pos_weight"] if stats is not None else 1.0
        self.module = self._module_cls(
            n_input=self.summary_stats.n_vars,
            n_batch=self.summary_stats.n_batch,
            n_continuous_cov=n_cont,
            n_hidden=n_hidden,
            n_latent=n_latent,
            mi_weight=mi_weight,
            pos_weight=pos_weight,
            encoder_input=encoder_input,
            dropout_rate=dropout_rate,
        )
        if stats is not None:
            for name in ("idf", "depth_mean", "depth_std", "cov_mean", "cov_std"):
                getattr(self.module, name).copy_(torch.as_tensor(stats[name]))
        self._model_summary_string = (
            f"SAILER: n_latent={n_latent}, n_hidden={n_hidden}, mi_weight={mi_weight}, "
            f"pos_weight={float(pos_weight):.3g}, encoder_input={encoder_input!r}, "
            f"dropout_rate={dropout_rate}, n_batch={self.summary_stats.n_batch}, "
            f"n_continuous_cov={n_cont}"
        )
        self.init_params_ = self._get_init_params(locals())

    def _data_stats(self, n_cont: int) -> dict:
        """0/1 ratio, mean and std of the log depth and of the covariates of the registered data."""
        X = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        per_cell, per_peak = accessibility_stats(X)
        stats = {
            **depth_stats(per_cell, X.shape[1]),
            "idf": (X.shape[0] / np.maximum(per_peak, 1)).astype(np.float32),
            "cov_mean": np.zeros(n_cont, dtype=np.float32),
            "cov_std": np.ones(n_cont, dtype=np.float32),
        }
        if n_cont:
            covs = np.asarray(
                self.adata_manager.get_from_registry(REGISTRY_KEYS.CONT_COVS_KEY), dtype=np.float64
            )
            std = covs.std(0)
            stats["cov_mean"] = covs.mean(0).astype(np.float32)
            stats["cov_std"] = np.where(std > 0, std, 1.0).astype(np.float32)
        return stats

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
        **kwargs,
    ) -> None:
        """Register a cells x peaks AnnData of scATAC-seq counts with SAILER.

        Counts are binarised inside the model (``count > 0``); the log number of accessible
        peaks of each cell is computed and standardised there too. Nothing is written into
        ``adata`` beyond scvi-tools' registry entries, and nothing at all when a check fails.

        Parameters
        ----------
        adata
            Cells x peaks; counts (or a binary matrix) in ``layer`` or ``.X``, in memory or
            on disk: a backed h5ad (``anndata.read_h5ad(path, backed="r")``) or an AnnData
            whose ``X`` is ``anndata.io.sparse_dataset`` of an h5ad or zarr group. Training then
            reads one mini-batch of rows per step and the checks read blocks of rows; keep the
            counts in ``.X`` (``layer=None``), since anndata loads the layers of a backed file
            into memory.
        layer
            Layer with non-negative integer counts; ``None`` uses ``.X``.
        batch_key
            Column of ``adata.obs`` with batches (samples, technologies): a confounder given
            to the decoder, one-hot.
        continuous_covariate_keys
            Numeric ``obs`` columns with further confounders (e.g. TSS enrichment, fraction of
            reads in peaks), standardised and given to the decoder.
        **kwargs
            Internal: ``source_registry`` when a saved model is loaded.

        Raises
        ------
        KeyError
            A named ``obs`` column is missing.
        ValueError
            Negative, non-integer or non-finite counts; a confounder column with missing or
            non-finite values or a non-numeric continuous covariate.

        Warns
        -----
        UserWarning
            Cells without any count (they are embedded from an empty profile at the mean
            depth) or peaks without any count (they are learned as never accessible).
        """
        check_model_data(adata)
        setup_method_args = cls._get_setup_method_args(**locals())
        X = get_matrix(adata, layer)
        where = layer_name(layer)
        check_expression(X, where, counts=True, integer=True)
        keys = list(continuous_covariate_keys or [])
        check_obs_keys(adata, batch_key=batch_key)
        check_obs_keys(adata, **{f"continuous_covariate_keys[{i}]": k for i, k in enumerate(keys)})
        for key in keys:
            column = adata.obs[key]
            if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
                raise ValueError(
                    f"adata.obs[{key!r}] (`continuous_covariate_keys`) must be numeric, found "
                    f"dtype {column.dtype}; pass categorical confounders as `batch_key`."
                )
            if not np.all(np.isfinite(column.to_numpy(dtype=np.float64))):
                raise ValueError(
                    f"adata.obs[{key!r}] (`continuous_covariate_keys`) holds infinite values."
                )
        if "source_registry" not in kwargs:
            per_cell, per_peak = accessibility_stats(X)
            if (per_cell == 0).any():
                warnings.warn(
                    f"{int((per_cell == 0).sum())} cells of {where} have no counts; SAILER "
                    "embeds them from an empty profile at the mean depth. Filter them out "
                    "(sc.pp.filter_cells(adata, min_counts=1)) unless that is intended.",
                    UserWarning,
                    stacklevel=2,
                )
            if (per_peak == 0).any():
                warnings.warn(
                    f"{int((per_peak == 0).sum())} peaks of {where} have no counts; SAILER "
                    "learns them as never accessible. Filter them out "
                    "(sc.pp.filter_genes(adata, min_cells=1)) to save memory and time.",
                    UserWarning,
                    stacklevel=2,
                )
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, keys or None),
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        register_fields(cls, adata_manager, adata, **kwargs)

    # -------------------------------------------------------------- inference
    def _inference_adata(self, adata: AnnData | None) -> AnnData:
        """The model's data, or a new ``adata`` checked and registered (nothing left on error)."""
        if adata is None or adata is self.adata:
            return self.adata
        check_model_data(adata)
        state = self.adata_manager.get_state_registry(REGISTRY_KEYS.X_KEY)
        check_genes(adata.var_names, state.get("column_names", self.adata.var_names))
        setup_args = self.adata_manager.registry["setup_args"]
        check_expression(
            get_matrix(adata, setup_args.get("layer")),
            layer_name(setup_args.get("layer")),
            counts=True,
            integer=True,
        )
        check_obs_keys(adata, batch_key=setup_args.get("batch_key"))
        for key in setup_args.get("continuous_covariate_keys") or []:
            check_obs_keys(adata, continuous_covariate_keys=key)
        with restore_on_error(type(self), adata):
            return self._validate_anndata(adata)

    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Posterior mean of ``z`` for every cell, ``(n_cells, n_latent)``.

        Parameters
        ----------
        adata
            AnnData with the model's peaks in the model's order (default: the model's own);
            a new one is set up with the model's :meth:`setup_anndata` arguments.
        indices
            Cells of ``adata`` to embed (default all).
        batch_size
            Cells per forward pass (default scvi-tools' 128).
        """
        return self._forward_batches(adata, indices, batch_size, lambda t, inf: inf["qz_m"])

    def get_accessibility_estimates(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        *,
        peaks: Sequence[str] | None = None,
        reference_batch: str | None = None,
        batch_size: int | None = None,
    ) -> pd.DataFrame:
        """Depth- and batch-free accessibility probabilities (the paper's imputation).

        Each cell's posterior mean is decoded with every confounder set to a reference value:
        the mean log depth, the ``reference_batch`` and the mean of every continuous
        covariate, so that two cells in the same state get the same profile whatever their
        depth or batch.

        Parameters
        ----------
        adata
            AnnData with the model's peaks (default: the model's own).
        indices
            Cells to return (default all).
        peaks
            Peaks (``var_names``) to return (default all).
        reference_batch
            Batch whose profile is returned; default the batch with the deepest cells on
            average (the paper's "batch with the highest data quality").
        batch_size
            Cells per forward pass.

        Returns
        -------
        Cells x peaks DataFrame of probabilities in ``(0, 1)``.
        """
        model_peaks = pd.Index(self.adata.var_names.astype(str))
        columns = model_peaks
        if peaks is not None:
            columns = pd.Index(check_genes_present(peaks, model_peaks, "the model's peaks"))
        order = torch.as_tensor(model_peaks.get_indexer(columns))
        code = self._reference_batch_code(reference_batch)
        module = self.module

        def decode(tensors, inf):
            z = inf["qz_m"]
            n = z.shape[0]
            batch = torch.full((n, 1), code, dtype=torch.long, device=z.device)
            covs = module.cov_mean.expand(n, -1)
            log_depth = module.depth_mean.expand(n)
            logits = module.generative(z, log_depth, batch, covs)["px_logits"]
            return torch.sigmoid(logits[:, order.to(z.device)])

        values = self._forward_batches(adata, indices, batch_size, decode)
        names = (self.adata if adata is None else adata).obs_names
        if indices is not None:
            names = names[np.asarray(indices)]
        return pd.DataFrame(values, index=names.copy(), columns=columns.copy())

    def _reference_batch_code(self, reference_batch: str | None) -> int:
        """Integer code of ``reference_batch`` (default: the deepest batch of the training data)."""
        state = self.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY)
        categories = [str(c) for c in state.categorical_mapping]
        if reference_batch is not None:
            if str(reference_batch) not in categories:
                raise ValueError(
                    f"reference_batch={reference_batch!r} is not a batch of the model "
                    f"(batches: {categories})."
                )
            return categories.index(str(reference_batch))
        if len(categories) == 1:
            return 0
        X = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        per_cell, _ = accessibility_stats(X)
        codes = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()
        depth = np.log(np.maximum(per_cell, 1.0))
        means = [
            depth[codes == c].mean() if (codes == c).any() else -np.inf
            for c in range(len(categories))
        ]
        return int(np.argmax(means))
