"""stAI: imputation of unmeasured spatial genes and annotation of spatial cells from a reference."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField
from scvi.model.base import BaseModelClass
from scvi.train import TrainingPlan, TrainRunner
from sklearn.model_selection import KFold

from scfound._constants import GROUP_KEY, SPATIAL_KEY, TARGET_SUM
from scfound._normalize import library_size, log_normalize
from scfound._utils import (
    check_expression,
    check_genes_present,
    check_scale,
    check_spatial_scale,
    get_matrix,
    get_spatial,
    layer_name,
    record_group_key,
    renamed_setup_args,
    resolve_group_key,
    warn_z_extent,
)
from scfound._validate import check_anndata, check_obs_keys
from scfound.data._paired_loader import PairedDataModule, block_edges, spatial_blocks
from scfound.nn import knn_adjacency
from scfound.nn._alignment import column_pearson, knn_softmax
from scfound.pp import knn_smoothing_matrix

from ..base._fields import QuietObsmField
from ..base._save import (
    WEIGHTS_FILE,
    ModelFileError,
    SafeSaveMixin,
    check_genes,
    check_model_data,
    check_prefix,
    check_state_dict,
    print_setup_args,
    read_model_meta,
    read_weights,
    register_fields,
    restore_on_error,
    write_model,
)
from ..base._training import AMBIGUOUS_BATCH_SIZE, adam_plan, run_training
from ._module import (
    REFERENCE_LABELS,
    REFERENCE_LIBRARY,
    REFERENCE_X,
    SPATIAL_EDGES,
    SPATIAL_X,
    TRANSFORMS,
    STAIModule,
)

logger = logging.getLogger(__name__)

#: optimisation steps of a default training run (the authors: 500 full-batch epochs)
DEFAULT_STEPS = 1000
#: below this many reference genes, a reference is a targeted panel (:func:`reference_breadth`)
PANEL_GENES = 500
#: a reference that shares at least this fraction of its genes with the spatial data is a panel
PANEL_SHARED_FRACTION = 0.5
#: a transcriptome-wide reference whose median cell holds fewer counts than this in the shared
#: genes is sparse, and gets ``reference_smoothing=DEFAULT_SMOOTHING`` by default
SPARSE_COUNTS = 10.0
#: reference neighbours of the default smoothing of a sparse reference (scanpy's neighbours)
DEFAULT_SMOOTHING = 15
#: loss weights of the authors' osmFISH imputation configuration
IMPUTATION_WEIGHTS = {
    "reconstruction": 1.0,
    "mmd": 0.1,
    "consistency": 1.0,
    "imputation": 1.0,
    "classification": 0.1,
    "gene": 0.0,
}
#: loss weights of the authors' osmFISH annotation configuration
ANNOTATION_WEIGHTS = IMPUTATION_WEIGHTS | {"classification": 10.0, "imputation": 2.0, "gene": 1.0}


def _per_10k(counts: sp.csr_matrix, library: np.ndarray, log: bool) -> sp.csr_matrix:
    """Reference counts per :data:`TARGET_SUM` (``log1p`` of them with ``log``), sparse.

    As :func:`~scfound.models.stai._module.transform`: libraries below 1 count as 1.
    """
    return log_normalize(counts, TARGET_SUM, library=library, min_library=1.0, log=log)


def _transformed(
    counts: sp.csr_matrix, how: str, library: np.ndarray | None = None
) -> sp.csr_matrix:
    """Sparse counts after :func:`~scfound.models.stai._module.transform` (``how``)."""
    if how == "cp10k_log1p":
        return _per_10k(counts, library, log=True)
    if how == "scale":
        return counts
    out = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    out.data = np.log1p(out.data)
    return out


def _mean_std(X: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation (a constant column gets std 1)."""
    mean = np.asarray(X.mean(0)).ravel()
    var = np.asarray(X.multiply(X).mean(0)).ravel() - mean**2
    std = np.sqrt(np.maximum(var, 0.0))
    std[std < 1e-8] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def reference_breadth(
    n_reference_genes: int, n_shared: int, shared_counts: np.ndarray
) -> tuple[bool, bool]:
    """Whether a reference is a targeted panel, and whether it is sparse in the shared genes.

    A reference is a *panel* when it measures fewer than :data:`PANEL_GENES` genes or shares at
    least :data:`PANEL_SHARED_FRACTION` of them with the spatial data (another section of the
    same platform); otherwise it is transcriptome-wide. A transcriptome-wide reference is
    *sparse* when its median cell holds fewer than :data:`SPARSE_COUNTS` counts in the shared
    genes.

    Parameters
    ----------
    n_reference_genes
        Genes the reference measures.
    n_shared
        Genes it shares with the spatial data.
    shared_counts
        Each reference cell's total count over the shared genes.

    Returns
    -------
    ``(panel, sparse)``.
    """
    panel = n_reference_genes < PANEL_GENES or n_shared >= PANEL_SHARED_FRACTION * n_reference_genes
    sparse = not panel and float(np.median(shared_counts)) < SPARSE_COUNTS
    return panel, sparse


def _finite(z: torch.Tensor, m: int) -> torch.Tensor:
    """``z``, the latents of submodel ``m``; a clear error if its training diverged."""
    if not torch.isfinite(z).all():
        raise FloatingPointError(
            f"submodel {m} gives non-finite latents: its training diverged. Train again "
            "with a lower learning rate (model.train(lr=...); in tl: train_kwargs={'lr': ...})."
        )
    return z


class STAI(SafeSaveMixin, BaseModelClass):
    """stAI: a spatial and a scRNA-seq reference dataset in one latent space.

    Zou et al. (2025), *stAI: a deep learning-based model for missing gene imputation and
    cell-type annotation of spatial transcriptomics* (NAR). The spatial cells are encoded by a
    graph-attention encoder over their spatial neighbour graph, the reference cells by an MLP,
    both into one latent space, aligned by a multi-kernel MMD and by coupled decoders (each
    decoder also reconstructs the other dataset's cells, scored by cosine). A gene that the
    spatial panel lacks is imputed for each spatial cell as a softmax-weighted mean of its
    ``topk`` nearest reference cells in latent space. The shared genes are split into
    ``n_folds`` folds; each submodel is supervised by imputing one fold from the others
    (``1 - Pearson`` per gene), and the submodels are averaged. A classifier trained on the
    reference labels annotates the spatial cells.

    Differences from the authors' code (``gszou99/stAI``), on purpose:

    * runs on CPU or GPU through scvi-tools' training plans (theirs hard-codes CUDA), with
      pure-torch graph attention (no torch-geometric);
    * mini-batches: a step sees a spatially contiguous block of at most ``batch_size`` spatial
      cells and a random draw of reference cells, so 100k+ cells fit (their full-batch MMD
      builds ``5 x N x N`` kernels); the k-NN graph is built once per slice, never across
      slices, and restricted to each block (theirs re-runs NN-descent in every batch);
    * the gene folds are trained together in one model (disjoint parameters, same batches);
    * ``topk=None`` gives the paper's softmax over all reference cells (a ``NameError`` in
      their code); the gene-consistency loss has the paper's Frobenius form as an option;
    * imputation and annotation are methods of one trained model, and nothing is read from or
      written to a working directory;
    * :meth:`get_imputed_expression` gives stAI's log-normalised reference values by default
      and, with ``scale="counts"``, expected counts at each spatial cell's depth (better against
      raw counts, worse against log-normalised ones, in
      ``benchmarks/results/reference_imputation.md``).

    Options beyond the paper: by default (``"auto"``) the reference's breadth
    (:func:`reference_breadth`) chooses ``reference_transform`` (a targeted panel is read as the
    spatial side is; theirs always library-normalises the reference) and
    ``reference_smoothing`` (on for a sparse transcriptome-wide reference only); the choices are
    logged and kept in :attr:`chosen_defaults_`. A softmax temperature can be picked by
    :meth:`calibrate_imputation` (``scfound.tl.impute`` does so by default).

    Parameters
    ----------
    adata_spatial
        Spatial AnnData registered with :meth:`setup_anndata` and a ``spatial_key``.
    adata_reference
        Reference AnnData (raw counts) registered with :meth:`setup_anndata`; its
        ``labels_key`` (if any) trains the classifier.
    n_hidden, n_latent
        Hidden and latent widths (stAI: 64 / 16).
    n_folds
        Gene folds, one submodel each (stAI: 5; at most the number of shared genes).
    topk
        Reference neighbours of the imputation softmax (stAI: 50; ``None`` = all cells).
    n_neighbors
        Neighbours of the spatial k-NN graph (stAI: 10).
    spatial_scale
        One factor per coordinate axis, multiplied into the coordinates before the k-NN graph
        and the mini-batch blocks are built (e.g. ``(1, 1, 5)`` when z is in units five times
        smaller than x and y); saved with the model. ``None``: coordinates as they are (a
        warning is given for 3-D coordinates whose z extent looks mis-scaled).
    dropout
        Dropout of the encoders (stAI: 0).
    spatial_transform
        ``"scale"``: z-score the spatial values as they are (stAI); ``"log1p"``: ``log1p`` first.
    reference_transform
        ``"cp10k_log1p"``: z-score the ``log1p`` of the reference counts normalised to 1e4 per
        cell (stAI); ``"scale"`` or ``"log1p"``: as ``spatial_transform``, without the
        normalisation. Normalising a panel of tens of genes (e.g. another spatial section as
        the reference) makes each gene depend on the panel's other genes and drops the cell's
        depth, which the spatial side keeps; for such a reference ``"scale"`` treats both
        sides alike (a warning is given when a panel is normalised). ``"auto"`` (default):
        ``"scale"`` for a targeted-panel reference, ``"cp10k_log1p"`` for a transcriptome-wide
        one (:func:`reference_breadth`).
    reference_smoothing
        ``None`` (stAI): a spatial cell gets the values of its nearest reference cells as they
        are. ``k``: each reference cell's value of an imputed gene is first averaged over its
        ``k`` nearest reference cells in the reference's own transcriptome-wide expression space
        (:func:`scfound.pp.knn_smoothing_matrix`), which denoises a sparse scRNA-seq reference.
        Only imputation reads it; training does not. Meant for a transcriptome-wide reference
        (a warning is given for a panel). ``"auto"`` (default): :data:`DEFAULT_SMOOTHING` for a
        transcriptome-wide reference that is sparse in the shared genes, else ``None``.
    weights
        Loss weights; keys of :data:`IMPUTATION_WEIGHTS` (its values are the defaults). The MMD
        matches the two datasets' latent distributions, so it assumes the same mix of cell
        types; for a reference whose mix differs, ``{"mmd": 0.0}`` keeps types apart.
    class_weight_power
        Cross-entropy weight ``n_c ** -p`` of a class with ``n_c`` reference cells (stAI
        annotation: 2; 0 = unweighted).
    gene_loss
        ``"cosine"`` (released code) or ``"frobenius"`` (paper) gene-consistency loss.
    fold_seed
        Seed of the gene folds (stAI: 8848).
    mmd_cells
        Cells of each dataset drawn per step for the MMD (its cost is quadratic; ``None``: all
        cells of the step, as stAI's full batch).

    Examples
    --------
    >>> import scfound as sf
    >>> sf.STAI.setup_anndata(adata_sp, layer="counts", spatial_key="spatial")
    >>> sf.STAI.setup_anndata(adata_ref, layer="counts", labels_key="cell_type")
    >>> model = sf.STAI(adata_sp, adata_ref)
    >>> model.train(max_epochs=500)
    >>> imputed = model.get_imputed_expression(genes=["Mbp", "Mog"])
    >>> labels = model.predict()

    """

    _module_cls = STAIModule
    _training_plan_cls = TrainingPlan
    _train_runner_cls = TrainRunner

    def __init__(
        self,
        adata_spatial: AnnData,
        adata_reference: AnnData,
        n_hidden: int = 64,
        n_latent: int = 16,
        n_folds: int = 5,
        topk: int | None = 50,
        n_neighbors: int = 10,
        spatial_scale: Sequence[float] | None = None,
        dropout: float = 0.0,
        spatial_transform: Literal["scale", "log1p"] = "scale",
        reference_transform: Literal["auto", "cp10k_log1p", "scale", "log1p"] = "auto",
        reference_smoothing: int | Literal["auto"] | None = "auto",
        weights: dict[str, float] | None = None,
        class_weight_power: float = 0.0,
        gene_loss: Literal["cosine", "frobenius"] = "cosine",
        fold_seed: int = 8848,
        mmd_cells: int | None = 512,
    ):
        check_anndata(adata_spatial, "adata_spatial")
        check_anndata(adata_reference, "adata_reference")
        super().__init__(adata_spatial)
        self.reference = adata_reference
        self.reference_manager = self._get_most_recent_anndata_manager(
            adata_reference, required=True
        )
        self._register_manager_for_instance(self.reference_manager)
        if SPATIAL_KEY not in self.adata_manager.data_registry:
            raise ValueError(
                "adata_spatial was set up without coordinates: call "
                "STAI.setup_anndata(adata_spatial, spatial_key=...)."
            )
        unknown = set(weights or {}) - set(IMPUTATION_WEIGHTS)
        if unknown:
            raise ValueError(
                f"unknown loss weights {sorted(unknown)}; use {list(IMPUTATION_WEIGHTS)}."
            )
        if spatial_transform not in ("scale", "log1p"):
            raise ValueError(
                f"spatial_transform must be 'scale' or 'log1p', got {spatial_transform!r}."
            )
        if reference_transform != "auto" and reference_transform not in TRANSFORMS:
            raise ValueError(
                f"reference_transform must be 'auto' or one of {list(TRANSFORMS)}, "
                f"got {reference_transform!r}."
            )
        if not (
            reference_smoothing is None
            or (isinstance(reference_smoothing, str) and reference_smoothing == "auto")
            or (
                isinstance(reference_smoothing, int | np.integer)
                and not isinstance(reference_smoothing, bool)
                and reference_smoothing >= 1
            )
        ):
            raise ValueError(
                f"reference_smoothing must be 'auto', None or a positive integer, got "
                f"{reference_smoothing!r}."
            )
        if gene_loss not in ("cosine", "frobenius"):
            raise ValueError(f"gene_loss must be 'cosine' or 'frobenius', got {gene_loss!r}.")
        self.shared_genes = [
            g for g in adata_spatial.var_names if g in set(adata_reference.var_names)
        ]
        if len(self.shared_genes) < 2:
            raise ValueError(
                f"adata_spatial and adata_reference share {len(self.shared_genes)} gene(s) by "
                "var_names; stAI needs at least 2 (harmonise gene names, e.g. symbols in both)."
            )
        if n_folds < 2:
            raise ValueError(f"n_folds must be at least 2, got {n_folds}.")
        n_folds = min(n_folds, len(self.shared_genes))
        self._load_data(n_neighbors, spatial_scale)
        reference_transform, reference_smoothing = self._choose_defaults(
            reference_transform, reference_smoothing
        )
        if reference_transform == "cp10k_log1p" and self._panel:
            warnings.warn(
                f"the reference is a targeted panel ({self.reference.n_vars} genes, "
                f"{len(self.shared_genes)} shared); normalising each cell to 1e4 over its genes "
                "makes every gene depend on the others. For a "
                "targeted-panel reference (e.g. another spatial section) "
                "reference_transform='scale' is usually better.",
                UserWarning,
                stacklevel=2,
            )
        if reference_smoothing is not None and self._panel:
            warnings.warn(
                f"the reference is a targeted panel ({self.reference.n_vars} genes); "
                "reference_smoothing averages each reference cell over neighbours found from "
                "those genes alone, "
                "which blurs cell types. It is meant for a transcriptome-wide reference.",
                UserWarning,
                stacklevel=2,
            )
        self.reference_smoothing = reference_smoothing
        #: (k, smoothing matrix) last built, so it is built once per ``reference_smoothing``
        self._smoother: tuple[int, sp.csr_matrix] | None = None
        folds = [
            calib.tolist()
            for _, calib in KFold(n_folds, shuffle=True, random_state=fold_seed).split(
                np.arange(len(self.shared_genes))
            )
        ]
        class_weights = None
        if self.labels is not None and class_weight_power:
            counts = np.bincount(self._labels, minlength=len(self.labels)).astype(np.float64)
            w = np.maximum(counts, 1.0) ** -class_weight_power
            class_weights = torch.as_tensor(w / w.mean(), dtype=torch.float32)
        self.module = self._module_cls(
            n_genes=len(self.shared_genes),
            folds=folds,
            spatial_stats=_mean_std(_transformed(self._spatial_counts, spatial_transform)),
            reference_stats=_mean_std(
                _transformed(self._reference_counts, reference_transform, self._library)
            ),
            n_labels=0 if self.labels is None else len(self.labels),
            class_weights=class_weights,
            n_hidden=n_hidden,
            n_latent=n_latent,
            dropout=dropout,
            topk=topk,
            spatial_transform=spatial_transform,
            reference_transform=reference_transform,
            weights=IMPUTATION_WEIGHTS | dict(weights or {}),
            gene_loss=gene_loss,
            mmd_cells=mmd_cells,
        )
        #: softmax temperature of the imputation (1: stAI; see :meth:`calibrate_imputation`)
        self.imputation_temperature_ = 1.0
        self.init_params_ = {
            "kwargs": {
                "n_hidden": n_hidden,
                "n_latent": n_latent,
                "n_folds": n_folds,
                "topk": topk,
                "n_neighbors": n_neighbors,
                "spatial_scale": self.spatial_scale,
                "dropout": dropout,
                "spatial_transform": spatial_transform,
                "reference_transform": reference_transform,
                "reference_smoothing": reference_smoothing,
                "weights": weights,
                "class_weight_power": class_weight_power,
                "gene_loss": gene_loss,
                "fold_seed": fold_seed,
                "mmd_cells": mmd_cells,
            }
        }
        self._model_summary_string = (
            f"STAI: {len(self.shared_genes)} shared genes, {n_folds} gene folds, "
            f"n_hidden={n_hidden}, n_latent={n_latent}, topk={topk}, "
            f"{'no' if self.labels is None else len(self.labels)} reference labels"
        )

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        labels_key: str | None = None,
        spatial_key: str | None = None,
        group_key: str | None = None,
        *,
        sample_key: str | None = None,
        **kwargs,
    ) -> None:
        """Register the spatial or the reference AnnData with stAI (call once for each).

        Parameters
        ----------
        adata
            Cells x genes. The reference needs raw counts (it is normalised to 1e4 and
            ``log1p``-transformed); the spatial data needs non-negative values.
        layer
            Layer with the values; ``None`` uses ``.X``.
        labels_key
            Reference: column of ``adata.obs`` with cell types (needed for annotation).
        spatial_key
            Spatial data: key of the ``(n_obs, 2)`` or ``(n_obs, 3)`` (x, y, z) coordinates in
            ``adata.obsm``.
        group_key
            Spatial data: column of ``adata.obs`` with the slices (or samples, fields of view) of
            the cells; the neighbour graph never joins two of them. ``None``: one slice.
        sample_key
            Deprecated name of ``group_key``.
        **kwargs
            Internal: ``source_registry`` when a saved model is loaded.

        """
        check_model_data(adata)
        setup_method_args = cls._get_setup_method_args(**locals())
        group_key = resolve_group_key(group_key, sample_key, "STAI.setup_anndata")
        record_group_key(setup_method_args, group_key)
        check_expression(get_matrix(adata, layer), layer_name(layer))
        check_obs_keys(adata, labels_key=labels_key, group_key=group_key)
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
            CategoricalObsField(GROUP_KEY, group_key),
        ]
        if spatial_key is not None:
            get_spatial(adata, spatial_key)
            fields.append(QuietObsmField(SPATIAL_KEY, spatial_key))
        manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        register_fields(cls, manager, adata, **kwargs)

    def _load_data(self, n_neighbors: int, spatial_scale: Sequence[float] | None) -> None:
        """Shared-gene matrices, reference library sizes and labels, and the spatial graph."""
        sp_manager, ref_manager = self.adata_manager, self.reference_manager
        sp_X = sp.csr_matrix(sp_manager.get_from_registry(REGISTRY_KEYS.X_KEY), dtype=np.float32)
        ref_X = sp.csr_matrix(ref_manager.get_from_registry(REGISTRY_KEYS.X_KEY), dtype=np.float32)
        check_expression(ref_X, "the reference", integer=True)
        self._library = library_size(ref_X, np.float32)
        if not self._library.any():
            raise ValueError("the reference has no counts (every cell sums to 0).")
        self._reference_X = ref_X
        self._spatial_counts = sp_X[:, self.adata.var_names.get_indexer(self.shared_genes)]
        self._reference_counts = ref_X[:, self.reference.var_names.get_indexer(self.shared_genes)]
        labels_setup = ref_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)
        if ref_manager.registry["setup_args"].get("labels_key") is None:
            self.labels, self._labels = None, None
        else:
            self.labels = np.asarray(labels_setup.categorical_mapping).astype(str)
            self._labels = np.asarray(
                ref_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)
            ).ravel()
        coords = np.asarray(sp_manager.get_from_registry(SPATIAL_KEY), dtype=np.float64)
        #: per-axis factors of the coordinates (``None``: as they are)
        self.spatial_scale = check_spatial_scale(spatial_scale, coords.shape[1])
        warn_z_extent(coords, self.spatial_scale, "STAI")
        self._coords = coords if self.spatial_scale is None else coords * self.spatial_scale
        self._samples = np.asarray(sp_manager.get_from_registry(GROUP_KEY)).ravel()
        self._adjacency = knn_adjacency(self._coords, n_neighbors, self._samples)

    def _choose_defaults(
        self, reference_transform: str, reference_smoothing: int | str | None
    ) -> tuple[str, int | None]:
        """Resolve the ``"auto"`` reference options from the reference's breadth.

        A targeted-panel reference (:func:`reference_breadth`) is read as the spatial side is
        (``reference_transform="scale"``: per-gene z-scores of its counts) and is not smoothed; a
        transcriptome-wide one is library-normalised (``"cp10k_log1p"``, stAI's) and, when sparse
        in the shared genes, smoothed over :data:`DEFAULT_SMOOTHING` neighbours. The choices are
        logged once and kept in :attr:`chosen_defaults_`.
        """
        panel, sparse = reference_breadth(
            self.reference.n_vars,
            len(self.shared_genes),
            np.asarray(self._reference_counts.sum(1)).ravel(),
        )
        self._panel = panel
        breadth = (
            f"a targeted panel ({self.reference.n_vars} genes, {len(self.shared_genes)} shared)"
            if panel
            else f"transcriptome-wide ({self.reference.n_vars} genes, "
            f"{len(self.shared_genes)} shared{', sparse in them' if sparse else ''})"
        )
        chosen = {}
        if reference_transform == "auto":
            reference_transform = "scale" if panel else "cp10k_log1p"
            chosen["reference_transform"] = reference_transform
        if isinstance(reference_smoothing, str):  # "auto", checked before
            reference_smoothing = DEFAULT_SMOOTHING if sparse else None
            chosen["reference_smoothing"] = reference_smoothing
        #: options that were ``"auto"`` and what the reference's breadth chose for them
        self.chosen_defaults_ = chosen | ({"reference": breadth} if chosen else {})
        if chosen:
            logger.info(
                "stAI: the reference is %s; chose %s.",
                breadth,
                ", ".join(f"{k}={v!r}" for k, v in chosen.items()),
            )
        return reference_transform, reference_smoothing

    # -------------------------------------------------------------- training
    def _make_batch(self, sp_cells: np.ndarray, ref_cells: np.ndarray) -> dict[str, torch.Tensor]:
        batch = {
            SPATIAL_X: torch.from_numpy(self._spatial_counts[sp_cells].toarray()),
            SPATIAL_EDGES: block_edges(self._adjacency, sp_cells),
            REFERENCE_X: torch.from_numpy(self._reference_counts[ref_cells].toarray()),
            REFERENCE_LIBRARY: torch.from_numpy(self._library[ref_cells, None]),
        }
        if self._labels is not None:
            batch[REFERENCE_LABELS] = torch.from_numpy(self._labels[ref_cells].astype(np.int64))
        return batch

    def train(
        self,
        max_epochs: int | None = None,
        *,
        lr: float = 2e-3,
        batch_size: int = 2048,
        reference_batch_size: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        seed: int = 0,
        enable_progress_bar: bool | None = None,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train every submodel with scvi-tools' :class:`~scvi.train.TrainingPlan` (Adam).

        One epoch visits every spatial block once; the last epoch's weights are kept (stAI has
        no model selection).

        Parameters
        ----------
        max_epochs
            Passes over the spatial cells. Default: enough for about :data:`DEFAULT_STEPS` (1000)
            optimisation steps, as the authors' 500 full-batch epochs.
        lr
            Adam learning rate (stAI: 2e-3, no weight decay).
        batch_size
            Largest spatial block of one step (a section with fewer cells is one full batch).
        reference_batch_size
            Reference cells drawn per step; default ``batch_size``.
        accelerator, devices
            Passed to Lightning.
        seed
            Seed of the weights, the block order and the reference draws.
        enable_progress_bar
            Show the progress bar (epoch, loss, time left); default
            :attr:`scfound.settings.progress_bar` (``True``).
        plan_kwargs
            Extra arguments of :class:`~scvi.train.TrainingPlan`.
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer`.

        """
        torch.manual_seed(seed)
        blocks = spatial_blocks(self._coords, self._samples, batch_size)
        if max_epochs is None:
            max_epochs = max(1, round(DEFAULT_STEPS / len(blocks)))
        data = PairedDataModule(
            self._make_batch,
            blocks,
            self.reference.n_obs,
            reference_batch_size or batch_size,
            seed=seed,
        )
        plan_defaults = adam_plan(lr, 0.0, optimizer="Adam")
        plan = self._training_plan_cls(self.module, **{**plan_defaults, **(plan_kwargs or {})})
        # a step holds a spatial block and a reference draw of another size, so Lightning warns
        # that the batch size is ambiguous; the one it takes (the block's cells) is the intended
        # weight of each step in the epoch's mean loss
        run_training(
            self,
            plan,
            data,
            max_epochs=max_epochs,
            enable_progress_bar=enable_progress_bar,
            ignore_warnings=(AMBIGUOUS_BATCH_SIZE,),
            accelerator=accelerator,
            devices=devices,
            **trainer_kwargs,
        )

    # ------------------------------------------------------------- inference
    @torch.inference_mode()
    def _latents(self, m: int, reference: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latents of every spatial cell (a graph per slice) and reference cell, submodel ``m``.

        ``reference=False`` skips the reference cells (``None`` in their place).
        """
        module, device = self.module, self.device
        module.eval()
        parts, order = [], []
        for code in np.unique(self._samples):
            cells = np.flatnonzero(self._samples == code)
            x = torch.from_numpy(self._spatial_counts[cells].toarray()).to(device)
            edges = block_edges(self._adjacency, cells).to(device)
            z, _ = module.encode(m, module.scale_spatial(x), edges)
            parts.append(z)
            order.append(cells)
        z_sp = torch.cat(parts)[torch.from_numpy(np.argsort(np.concatenate(order))).to(device)]
        if not reference:
            return _finite(z_sp, m), None
        chunks = []
        for start in range(0, self.reference.n_obs, 16_384):
            rows = slice(start, start + 16_384)
            x = torch.from_numpy(self._reference_counts[rows].toarray()).to(device)
            lib = torch.from_numpy(self._library[rows, None]).to(device)
            _, z = module.encode(m, None, None, module.scale_reference(x, lib))
            chunks.append(z)
        return _finite(z_sp, m), _finite(torch.cat(chunks), m)

    @property
    def n_folds(self) -> int:
        """Number of gene-fold submodels."""
        return len(self.module.submodels)

    def get_latent_representation(
        self, dataset: Literal["spatial", "reference"] = "spatial", fold: int = 0
    ) -> np.ndarray:
        """Latent vectors of the spatial or reference cells under submodel ``fold``.

        Each submodel has its own latent space (it reads other genes), so latents of different
        folds are not comparable; spatial and reference latents of one fold are.
        """
        self._check_if_trained(warn=False)
        if dataset not in ("spatial", "reference"):
            raise ValueError(f"dataset must be 'spatial' or 'reference', got {dataset!r}.")
        if not 0 <= fold < self.n_folds:
            raise ValueError(f"fold must be in [0, {self.n_folds}), got {fold}.")
        z_sp, z_ref = self._latents(fold)
        return (z_sp if dataset == "spatial" else z_ref).cpu().numpy()

    def get_imputed_expression(
        self,
        adata: AnnData | None = None,
        *,
        genes: Sequence[str] | None = None,
        scale: Literal["counts", "log1p"] = "log1p",
        temperature: float | None = None,
    ) -> pd.DataFrame:
        """Expression of reference genes in the spatial cells, averaged over the submodels.

        Each spatial cell gets the softmax-weighted mean of its nearest reference cells (in each
        submodel's latent space) of a per-cell value of the gene, set by ``scale`` (and averaged
        over each reference cell's expression neighbours first with ``reference_smoothing``).

        Parameters
        ----------
        adata
            ``None`` or the spatial AnnData the model was set up with (same ``obs_names``): stAI
            imputes the cells it was trained with.
        genes
            Reference genes to impute; default every reference gene the spatial data lacks.
        scale
            ``"log1p"`` (default, stAI): the reference's ``log1p`` of counts normalised to 1e4
            per cell. ``"counts"``: expected counts at each spatial cell's own depth: the
            neighbours' mean normalised expression (counts per 1e4, not logged), times the
            spatial cell's total over the shared genes, divided by the reference's mean
            normalised total over the shared genes. The spatial cells' depth varies with cell
            size and detection; raw counts carry it, log-normalised values do not, so
            ``"counts"`` correlates better with raw counts and ``"log1p"`` with
            log-normalised ones.
        temperature
            Softmax temperature of the neighbour weights (distances are divided by it); default
            :attr:`imputation_temperature_`: 1 (stAI) unless :meth:`calibrate_imputation` set it.

        Returns
        -------
        DataFrame of ``float32`` values, spatial cells (``obs_names``) x genes.

        """
        self._check_spatial_adata(adata)
        check_scale(scale)
        temperature = self._temperature(temperature)
        self._check_if_trained(warn=False)
        ref_genes = self.reference.var_names
        if genes is None:
            measured = set(self.adata.var_names)
            genes = [g for g in ref_genes if g not in measured]
            if not genes:
                raise ValueError(
                    "the reference has no gene that the spatial data lacks; pass `genes=`."
                )
        else:
            genes = check_genes_present(genes, ref_genes, "the reference")
        counts = self._reference_X[:, ref_genes.get_indexer(genes)]
        values = self._smoothed(_per_10k(counts, self._library, log=scale == "log1p"))
        out = np.zeros((self.adata.n_obs, len(genes)), dtype=np.float64)
        for m in range(self.n_folds):
            out += (self._neighbour_weights(m, temperature) @ values).toarray()
        out /= self.n_folds
        if scale == "counts":
            depth = np.asarray(self._spatial_counts.sum(1), dtype=np.float64)
            shared = np.asarray(self._reference_counts.sum(1), dtype=np.float64).ravel()
            shared = float(np.mean(shared * TARGET_SUM / np.maximum(self._library, 1.0)))
            out *= depth / max(shared, 1e-12)
        return pd.DataFrame(
            out.astype(np.float32),
            index=self.adata.obs_names.copy(),
            columns=genes,
        )

    def calibrate_imputation(
        self,
        temperatures: Sequence[float] = (0.125, 0.25, 0.5, 1.0),
        scale: Literal["log1p", "counts"] = "log1p",
    ) -> pd.Series:
        """Pick the imputation temperature on the measured genes, without held-out data.

        Each submodel never reads its calibration genes, though the spatial data measures them:
        they are imputed from the reference at every temperature and scored by their Pearson
        correlation with the spatial values (per gene across cells): on the ``counts`` scale with
        the counts, the imputation times each cell's total over the submodel's training genes;
        on the ``log1p`` scale with the ``log1p`` of the counts per 1e4 of that total. The
        scored genes never enter their own depth. The temperature with the best mean over genes and
        submodels becomes :attr:`imputation_temperature_`, the default of
        :meth:`get_imputed_expression`. The submodels were trained at temperature 1 on these
        genes' imputation loss, which favours 1, so a lower choice is conservative.

        Parameters
        ----------
        temperatures
            Candidates (positive).
        scale
            Output scale to calibrate for (see :meth:`get_imputed_expression`).

        Returns
        -------
        Mean Pearson correlation of the calibration genes per temperature.

        """
        temps = [float(t) for t in temperatures]
        if not temps or any(not t > 0 for t in temps):
            raise ValueError(f"temperatures must be positive numbers, got {list(temperatures)}.")
        check_scale(scale)
        self._check_if_trained(warn=False)
        reference = self._smoothed(
            _per_10k(self._reference_counts, self._library, log=scale == "log1p")
        )
        spatial = self._spatial_counts.toarray().astype(np.float64)
        scores = {t: [] for t in temps}
        for m in range(self.n_folds):
            train, calib = (g.cpu().numpy() for g in self.module.genes(m))
            depth = spatial[:, train].sum(1, keepdims=True)
            target = spatial[:, calib]
            if scale == "log1p":
                target = np.log1p(target / np.maximum(depth, 1.0) * TARGET_SUM)
            latents = self._latents(m)
            for t in temps:
                pred = (self._neighbour_weights(m, t, latents) @ reference[:, calib]).toarray()
                if scale == "counts":
                    pred = pred * depth
                pcc = column_pearson(torch.from_numpy(pred), torch.from_numpy(target))
                scores[t] += pcc.tolist()
        table = pd.Series({t: float(np.mean(v)) for t, v in scores.items()}, name="calibration_pcc")
        table.index.name = "temperature"
        self.imputation_temperature_ = float(table.idxmax())
        return table

    def _check_spatial_adata(self, adata: AnnData | None) -> None:
        """``adata`` must be None or the spatial data of the model (same ``obs_names``)."""
        if adata is None:
            return
        if not isinstance(adata, AnnData):
            hint = (
                " (the first argument is `adata`; pass genes as `genes=[...]`)"
                if isinstance(adata, str | Sequence | pd.Index | np.ndarray)
                else ""
            )
            raise ValueError(
                f"adata must be None or the spatial AnnData of the model, got "
                f"{type(adata).__name__}{hint}."
            )
        if not adata.obs_names.equals(self.adata.obs_names):
            raise ValueError(
                f"adata ({adata.n_obs} cells) is not the spatial data the model was set up with "
                f"({self.adata.n_obs} cells; obs_names must be the same, in the same order): stAI "
                "imputes the spatial cells it was trained with. Pass adata=None, or set up and "
                "train a model on the other cells."
            )

    def _smoothed(self, values: sp.csr_matrix) -> sp.csr_matrix:
        """Reference ``values`` (cells x genes), averaged as ``reference_smoothing`` asks."""
        k = self.reference_smoothing
        if k is None:
            return values
        if self._smoother is None or self._smoother[0] != k:
            self._smoother = (k, knn_smoothing_matrix(self._reference_X, k))
        return sp.csr_matrix(self._smoother[1] @ values, dtype=np.float32)

    def _temperature(self, temperature: float | None) -> float:
        """``temperature``, or the model's when None; must be positive."""
        temperature = self.imputation_temperature_ if temperature is None else temperature
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}.")
        return float(temperature)

    def _neighbour_weights(
        self, m: int, temperature: float = 1.0, latents: tuple | None = None
    ) -> sp.csr_matrix:
        """Sparse ``(n_spatial, n_reference)`` imputation weights of submodel ``m``.

        ``latents`` are submodel ``m``'s ``(spatial, reference)`` latents, if already computed.
        """
        z_sp, z_ref = self._latents(m) if latents is None else latents
        n_ref = z_ref.shape[0]
        k = n_ref if self.module.topk is None else min(self.module.topk, n_ref)
        step = max(1, 2**22 // n_ref)
        rows, cols, vals = [], [], []
        with torch.inference_mode():
            for start in range(0, z_sp.shape[0], step):
                w, idx = knn_softmax(
                    z_sp[start : start + step], z_ref, self.module.topk, temperature
                )
                rows.append(np.repeat(np.arange(start, start + w.shape[0]), k))
                cols.append(idx.cpu().numpy().ravel())
                vals.append(w.cpu().numpy().ravel())
        return sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(z_sp.shape[0], n_ref),
        )

    def predict(self, soft: bool = False) -> pd.Series | pd.DataFrame:
        """Cell types of the spatial cells: the argmax of the submodels' mean probabilities.

        Parameters
        ----------
        soft
            Return the class probabilities (spatial cells x reference labels) instead.

        """
        self._check_if_trained(warn=False)
        if self.labels is None:
            raise ValueError(
                "the reference was set up without labels: call "
                "STAI.setup_anndata(adata_reference, labels_key=...) and train again."
            )
        probs = 0.0
        for m in range(self.n_folds):
            z_sp, _ = self._latents(m, reference=False)
            with torch.inference_mode():
                logits = self.module.submodels[m].classifier(z_sp)
            probs = probs + torch.softmax(logits, -1).cpu().numpy()
        probs = pd.DataFrame(
            probs / self.n_folds, index=self.adata.obs_names.copy(), columns=self.labels
        )
        if soft:
            return probs
        return pd.Series(
            pd.Categorical(probs.idxmax(axis=1), categories=self.labels), index=probs.index
        )

    # ------------------------------------------------------------ save/load
    def save(self, dir_path: str, overwrite: bool = False) -> None:
        """Save weights (``model.pt``) and settings (``model.json``, no pickle) to ``dir_path``.

        Parameters
        ----------
        dir_path
            Folder to write to.
        overwrite
            Replace an existing folder's model files.

        """
        meta = {
            "spatial_var_names": self.adata.var_names.astype(str).tolist(),
            "reference_var_names": self.reference.var_names.astype(str).tolist(),
            "spatial_setup": self.adata_manager.registry["setup_args"],
            "reference_setup": self.reference_manager.registry["setup_args"],
            "registries": {
                "spatial": self.adata_manager.registry,
                "reference": self.reference_manager.registry,
            },
            "init_params": self.init_params_["kwargs"],
            "is_trained": self.is_trained_,
            "imputation_temperature": self.imputation_temperature_,
        }
        write_model(dir_path, self, meta, overwrite)

    @classmethod
    def load(cls, dir_path: str, adata_spatial: AnnData, adata_reference: AnnData) -> STAI:
        """Load a model saved with :meth:`save` onto the same spatial and reference genes.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata_spatial, adata_reference
            The two datasets, with the saved genes in the same order; each is set up with its
            saved :meth:`setup_anndata` arguments.

        Returns
        -------
        The model.

        Raises
        ------
        ~scfound.models.base.ModelFileError
            When the folder is missing, incomplete or corrupt, holds another model class, or its
            weights do not fit the saved settings. Settings and weights are read and checked
            before either AnnData is set up, and a load that fails later leaves both as they were.

        """
        keys = ("spatial_var_names", "reference_var_names", "spatial_setup", "reference_setup")
        meta = read_model_meta(dir_path, cls.__name__, (*keys, "init_params", "is_trained"))
        dir_path = os.fspath(dir_path)
        for key in ("spatial_setup", "reference_setup", "init_params"):
            if not isinstance(meta[key], dict):
                raise ModelFileError(
                    f"{dir_path} is not a valid scfound model folder: `{key}` in model.json is "
                    "not an object."
                )
        state = read_weights(dir_path)
        check_model_data(adata_spatial, "adata_spatial")
        check_model_data(adata_reference, "adata_reference")
        check_genes(adata_spatial.var_names, meta["spatial_var_names"])
        check_genes(adata_reference.var_names, meta["reference_var_names"])
        with restore_on_error(cls, adata_spatial, adata_reference):
            cls.setup_anndata(adata_spatial, **renamed_setup_args(meta["spatial_setup"]))
            cls.setup_anndata(adata_reference, **renamed_setup_args(meta["reference_setup"]))
            try:
                model = cls(adata_spatial, adata_reference, **meta["init_params"])
            except TypeError as err:
                raise ModelFileError(
                    f"{dir_path} is not a valid scfound model folder: its init parameters do "
                    f"not fit STAI ({err})."
                ) from None
            check_state_dict(
                state, model.module, os.path.join(dir_path, WEIGHTS_FILE), cls.__name__
            )
            model.module.load_state_dict(state)
        model.is_trained_ = bool(meta["is_trained"])
        model.imputation_temperature_ = float(meta.get("imputation_temperature", 1.0))
        model.module.eval()
        return model

    @classmethod
    def load_registry(cls, dir_path: str, prefix: str | None = None) -> dict:
        """The registries of the spatial and the reference AnnData saved with a model.

        Read from ``model.json``; nothing is unpickled.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        prefix
            Not supported (scfound saves without a file prefix); must be ``None``.

        Returns
        -------
        ``{"spatial": registry, "reference": registry}``. Models saved before the registries
        were recorded give the setup arguments alone (``{"setup_args": ...}``).

        """
        check_prefix(prefix)
        meta = read_model_meta(dir_path, cls.__name__, ("spatial_setup", "reference_setup"))
        saved = meta.get("registries") or {}
        registries = {}
        for name in ("spatial", "reference"):
            registry = saved.get(name) if isinstance(saved, dict) else None
            if not isinstance(registry, dict):
                registry = {"model_name": cls.__name__, "setup_args": meta[f"{name}_setup"]}
            registries[name] = registry
        return registries

    @classmethod
    def view_setup_args(cls, dir_path: str, prefix: str | None = None) -> None:
        """Print the arguments the saved model's two AnnData were set up with (read from JSON).

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        prefix
            Not supported (scfound saves without a file prefix); must be ``None``.

        """
        for name, registry in cls.load_registry(dir_path, prefix).items():
            print(f"{name} AnnData:")
            print_setup_args(cls.__name__, registry)
