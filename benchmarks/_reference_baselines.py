"""Baselines of the reference-based imputation and annotation benchmark (stAI protocol).

Each baseline gets what stAI gets: a spatial query (raw counts in ``layers['counts']``, and the
coordinates in ``obsm['spatial']``, which none of these baselines uses) and an scRNA-seq
reference (raw counts in ``layers['counts']``, cell types in ``obs``). Genes are matched by name;
every method uses the genes the two share, so that a gene held out of the query is imputed from
the others. Imputed values stay on each method's own scale (the benchmark's per-gene metrics are
scale-free or work on z-scores).

Imputation baselines: a SpaGE-like kNN imputer (:func:`spage_impute`), gimVI
(:func:`gimvi_impute`) and Tangram (:func:`tangram_map` + :func:`tangram_impute`). Annotation
baselines: kNN label transfer in the same joint PCA space (:func:`knn_annotate`), scANVI
(:func:`scanvi_annotate`) and Tangram's label projection (:func:`tangram_annotate`).

The SpaGE-like imputer follows the ideas of the SpaGE paper (Abdelaal et al. 2020, NAR) with a
plain PCA fitted on the reference instead of SpaGE's principal-vector alignment; the code is
written from the description, not taken from the SpaGE or Tangram projects. Tangram runs through
its own package (``tangram-sc`` 1.0.4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

import scfound as sf
from scfound._constants import TARGET_SUM
from scfound._normalize import library_size, log_normalize

COUNTS = "counts"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def counts_of(adata: AnnData, genes: Sequence[str] | None = None) -> np.ndarray:
    """Dense float64 counts (``layers['counts']``, else ``.X``) of ``genes`` (default all).

    Parameters
    ----------
    adata
        Cells x genes.
    genes
        Genes to take, in this order; ``None`` takes all.

    Returns
    -------
    Dense ``float64`` cells x genes matrix.
    """
    X = adata.layers[COUNTS] if COUNTS in adata.layers else adata.X
    if genes is not None:
        X = X[:, adata.var_names.get_indexer(list(genes))]
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    return X.astype(np.float64)


def shared_genes(query: AnnData, reference: AnnData) -> list[str]:
    """Genes of ``query`` that ``reference`` also measures, in the query's order."""
    ref = set(reference.var_names)
    genes = [g for g in query.var_names if g in ref]
    if not genes:
        raise ValueError("the query and the reference share no gene.")
    return genes


def log_cp10k(adata: AnnData, genes: Sequence[str]) -> np.ndarray:
    """``log1p`` of counts per 10,000, with each cell's library over *all* its genes.

    The library size is the cell's total over every gene ``adata`` measures (as scanpy's
    ``normalize_total`` before subsetting), then ``genes`` are taken. Cells without counts stay 0.

    Parameters
    ----------
    adata
        Cells x genes with raw counts.
    genes
        Genes to return.

    Returns
    -------
    Dense ``float64`` cells x ``genes`` matrix.
    """
    library = library_size(counts_of(adata))
    return log_normalize(counts_of(adata, genes), TARGET_SUM, library=library)


def zscore(X: np.ndarray) -> np.ndarray:
    """Per-gene z-scores over cells (``ddof=0``); constant genes become 0."""
    mean = X.mean(axis=0)
    sd = X.std(axis=0)
    return np.divide(X - mean, sd, out=np.zeros_like(X), where=sd > 0)


def reference_features(
    reference: AnnData, genes: Sequence[str], transform: str = "cp10k_log1p"
) -> np.ndarray:
    """The reference's ``genes`` as ``scfound.STAI``'s ``reference_transform`` reads them.

    ``"cp10k_log1p"``: :func:`log_cp10k`; ``"scale"``: raw counts; ``"log1p"``: their ``log1p``.
    """
    if transform == "cp10k_log1p":
        return log_cp10k(reference, genes)
    if transform == "scale":
        return counts_of(reference, genes)
    if transform == "log1p":
        return np.log1p(counts_of(reference, genes))
    raise ValueError(f"unknown reference transform {transform!r}.")


def joint_pca(
    query: AnnData,
    reference: AnnData,
    genes: Sequence[str],
    n_pcs: int,
    seed: int = 0,
    reference_transform: str = "cp10k_log1p",
) -> tuple[np.ndarray, np.ndarray]:
    """Reference and query in one PCA space fitted on the reference.

    The reference is log1p-CP10k normalised (library over all its genes; or as
    ``reference_transform`` says, see :func:`reference_features`) and both datasets are
    z-scored per gene over their own cells (the query from raw counts, as stAI does); the PCA
    (``min(n_pcs, len(genes))`` components) is fitted on the reference and applied to both.

    Parameters
    ----------
    query
        Spatial cells with raw counts.
    reference
        Reference cells with raw counts.
    genes
        Genes both measure (the model's inputs).
    n_pcs
        Largest number of components.
    seed
        Random state of the PCA solver.
    reference_transform
        Reference values before the z-scores (:func:`reference_features`).

    Returns
    -------
    ``(reference_pcs, query_pcs)``.
    """
    ref = zscore(reference_features(reference, genes, reference_transform))
    qry = zscore(counts_of(query, genes))
    n_comps = max(1, min(n_pcs, len(genes), ref.shape[0]))
    pca = PCA(n_components=n_comps, random_state=seed).fit(ref)
    return pca.transform(ref), pca.transform(qry)


def cosine_neighbors(
    query_pcs: np.ndarray, reference_pcs: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distances and indices of each query cell's ``k`` nearest reference cells."""
    k = min(k, len(reference_pcs))
    nn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(reference_pcs)
    return nn.kneighbors(query_pcs)


def spage_weights(distances: np.ndarray) -> np.ndarray:
    """Neighbour weights of the SpaGE paper: ``1 - d / sum(d)`` over the close neighbours.

    Only neighbours with a cosine distance below 1 (positive cosine similarity) count; their
    weights ``1 - d_i / sum_j d_j`` are normalised to sum to 1 (SpaGE divides by ``n - 1``,
    which is the same). A query cell with fewer than two such neighbours gets uniform weights
    over them (or over all ``k`` when it has none).

    Parameters
    ----------
    distances
        Cosine distances, query cells x k, sorted or not.

    Returns
    -------
    Weights of the same shape, rows summing to 1 (0 for excluded neighbours).
    """
    close = distances < 1.0
    d = np.where(close, distances, 0.0)
    total = d.sum(axis=1, keepdims=True)
    w = np.where(close, 1.0 - np.divide(d, total, out=np.zeros_like(d), where=total > 0), 0.0)
    n_close = close.sum(axis=1)
    degenerate = (n_close < 2) | (w.sum(axis=1) <= 0)
    if degenerate.any():
        fallback = np.where(n_close[:, None] > 0, close, True)[degenerate].astype(float)
        w[degenerate] = fallback
    return w / w.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------
# imputation
# --------------------------------------------------------------------------------------------


def spage_impute(
    query: AnnData,
    reference: AnnData,
    targets: Sequence[str],
    *,
    n_pv: int = 30,
    k: int = 50,
    seed: int = 0,
    scale: str = "log1p",
    reference_transform: str = "cp10k_log1p",
    reference_smoothing: int | None = None,
) -> pd.DataFrame:
    """SpaGE-like imputation: weighted mean over the 50 nearest reference cells.

    The genes ``query`` and ``reference`` share are z-scored in both (the reference after
    log1p-CP10k) and projected on ``n_pv`` principal components of the reference
    (:func:`joint_pca`); each query cell's ``k`` nearest reference cells by cosine distance in
    that space are weighted as in SpaGE (:func:`spage_weights`), and the targets are the weighted
    mean of the reference's log1p-CP10k values. SpaGE aligns the two datasets' principal vectors
    first (PRECISE); this baseline does not.

    Parameters
    ----------
    query
        Spatial cells with raw counts, without the target genes.
    reference
        Reference with raw counts of the shared genes and the targets.
    targets
        Genes to impute (reference genes).
    n_pv
        Largest number of principal components (fewer when fewer genes are shared).
    k
        Neighbours per query cell.
    seed
        Random state of the PCA solver.
    scale
        ``"log1p"``: weighted mean of the reference's log1p-CP10k; ``"counts"``: weighted mean
        of its CP10k, times the query cell's total over the shared genes divided by the
        reference's mean CP10k total over them (``scfound.STAI``'s ``scale="counts"``).
    reference_transform
        Reference values of the joint PCA (:func:`reference_features`).
    reference_smoothing
        ``k``: average the reference's target values over each reference cell's ``k`` nearest
        reference cells in its own expression space first (``scfound.pp.knn_smoothing_matrix``
        over all reference genes, as ``scfound.STAI``'s ``reference_smoothing``).

    Returns
    -------
    DataFrame of query cells x ``targets``, on the ``scale`` asked for.
    """
    genes = [g for g in shared_genes(query, reference) if g not in set(targets)]
    ref_pcs, qry_pcs = joint_pca(query, reference, genes, n_pv, seed, reference_transform)
    dist, idx = cosine_neighbors(qry_pcs, ref_pcs, k)
    weights = spage_weights(dist)
    if scale not in ("log1p", "counts"):
        raise ValueError(f"scale must be 'log1p' or 'counts', got {scale!r}.")
    values = log_cp10k(reference, targets)
    if scale == "counts":
        values = np.expm1(values)
    if reference_smoothing is not None:
        values = sf.pp.knn_smoothing_matrix(counts_of(reference), reference_smoothing) @ values
    imputed = np.einsum("nk,nkg->ng", weights, values[idx])
    if scale == "counts":
        shared = np.expm1(log_cp10k(reference, genes)).sum(axis=1).mean()
        imputed *= counts_of(query, genes).sum(axis=1, keepdims=True) / shared
    return pd.DataFrame(imputed, index=query.obs_names, columns=list(targets))


def gimvi_impute(
    query: AnnData,
    reference: AnnData,
    targets: Sequence[str],
    *,
    reference_genes: str = "shared",
    max_epochs: int = 200,
    seed: int = 0,
    train_kwargs: Mapping[str, Any] | None = None,
    normalized: bool = True,
) -> pd.DataFrame:
    """Impute with gimVI (scvi-tools ``scvi.external.GIMVI``) trained on raw counts.

    The spatial AnnData holds the genes the query shares with the reference; the seq AnnData
    holds those plus the targets (``reference_genes='shared'``) or every reference gene
    (``'all'``, as in the scvi-tools tutorial). Both are set up on raw counts with the
    defaults (ZINB for seq, NB for spatial, 10 latent dimensions) and trained for
    ``max_epochs``; the values are ``get_imputed_values(normalized=True)`` of the spatial cells.

    Parameters
    ----------
    query
        Spatial cells with raw counts, without the target genes.
    reference
        Reference with raw counts.
    targets
        Genes to impute.
    reference_genes
        ``'shared'`` or ``'all'``: the genes of the seq AnnData.
    max_epochs
        Training epochs (200, as in the scvi-tools tutorial).
    seed
        ``scvi.settings.seed``.
    train_kwargs
        Passed to :meth:`scvi.external.GIMVI.train`.
    normalized
        ``get_imputed_values(normalized=...)``: each cell's decoded frequencies (``True``) or
        its expected counts at its library size (``False``).

    Returns
    -------
    DataFrame of query cells x ``targets``.
    """
    import scvi
    from scvi.external import GIMVI

    scvi.settings.seed = seed
    genes = [g for g in shared_genes(query, reference) if g not in set(targets)]
    if reference_genes == "shared":
        seq_genes = genes + [g for g in targets if g not in set(genes)]
    elif reference_genes == "all":
        seq_genes = list(reference.var_names)
    else:
        raise ValueError(f"reference_genes must be 'shared' or 'all', got {reference_genes!r}.")
    seq = AnnData(
        sp.csr_matrix(counts_of(reference, seq_genes), dtype=np.float32),
        obs=pd.DataFrame(index=reference.obs_names.copy()),
        var=pd.DataFrame(index=pd.Index(seq_genes)),
    )
    spatial = AnnData(
        sp.csr_matrix(counts_of(query, genes), dtype=np.float32),
        obs=pd.DataFrame(index=query.obs_names.copy()),
        var=pd.DataFrame(index=pd.Index(genes)),
    )
    GIMVI.setup_anndata(seq)
    GIMVI.setup_anndata(spatial)
    model = GIMVI(seq, spatial)
    kwargs = {"enable_progress_bar": False, **(train_kwargs or {})}
    model.train(max_epochs=max_epochs, **kwargs)
    _, imputed = model.get_imputed_values(normalized=normalized)
    cols = seq.var_names.get_indexer(list(targets))
    return pd.DataFrame(np.asarray(imputed)[:, cols], index=query.obs_names, columns=list(targets))


def tangram_map(
    query: AnnData,
    reference: AnnData,
    genes: Sequence[str],
    *,
    num_epochs: int = 1000,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[AnnData, AnnData]:
    """Tangram's cell-to-spot mapping (``mode='cells'``) trained on ``genes``, raw counts.

    Uses the package (``tangram-sc`` 1.0.4) with its defaults: learning rate 0.1, the
    ``rna_count_based`` density prior, ``lambda_g1=1``. As in the stAI paper, both datasets
    enter as raw counts. Tangram seeds only when ``random_state`` is truthy, so the global numpy
    and torch generators are seeded here as well (``seed=0`` would otherwise not be
    reproducible).

    Parameters
    ----------
    query
        Spatial cells with raw counts.
    reference
        Reference cells with raw counts of ``genes`` (and of any gene to project later).
    genes
        Training genes (measured by both).
    num_epochs
        Adam steps (1000 by default).
    seed
        Random seed.
    device
        Torch device.

    Returns
    -------
    ``(adata_map, adata_sc)``: the reference-cells x spots mapping and the (lower-cased,
    filtered) reference AnnData that Tangram prepared, for :func:`tangram_impute` and
    :func:`tangram_annotate`.
    """
    import logging

    import tangram as tg
    import torch

    logging.getLogger().setLevel(logging.WARNING)
    adata_sc = AnnData(
        sp.csr_matrix(counts_of(reference), dtype=np.float32),
        obs=reference.obs.copy(),
        var=pd.DataFrame(index=reference.var_names.copy()),
    )
    qry_genes = [g for g in query.var_names if g in set(genes)]
    adata_sp = AnnData(
        sp.csr_matrix(counts_of(query, qry_genes), dtype=np.float32),
        obs=pd.DataFrame(index=query.obs_names.copy()),
        var=pd.DataFrame(index=pd.Index(qry_genes)),
    )
    tg.pp_adatas(adata_sc, adata_sp, genes=list(genes))
    # Tangram draws its initial mapping from numpy's global generator
    np.random.seed(seed)  # noqa: NPY002
    torch.manual_seed(seed)
    adata_map = tg.map_cells_to_space(
        adata_sc,
        adata_sp,
        mode="cells",
        num_epochs=num_epochs,
        device=device,
        random_state=seed,
        verbose=False,
    )
    return adata_map, adata_sc


def tangram_impute(adata_map: AnnData, adata_sc: AnnData, targets: Sequence[str]) -> pd.DataFrame:
    """Project reference expression of ``targets`` through a Tangram mapping.

    ``tangram.project_genes``: the mapping (reference cells x spots) transposed times the
    reference's raw counts, i.e. raw-count scale.

    Parameters
    ----------
    adata_map
        Output of :func:`tangram_map`.
    adata_sc
        The reference AnnData returned by :func:`tangram_map`.
    targets
        Genes to impute (reference genes, any case).

    Returns
    -------
    DataFrame of spots x ``targets``.
    """
    import tangram as tg

    sub = adata_sc[:, [g.lower() for g in targets]].copy()
    projected = tg.project_genes(adata_map, sub)
    values = projected[:, [g.lower() for g in targets]].X
    values = values.toarray() if sp.issparse(values) else np.asarray(values)
    return pd.DataFrame(values, index=adata_map.var_names, columns=list(targets))


def tangram_annotate(adata_map: AnnData, labels_key: str) -> np.ndarray:
    """Cell types of the spots from a Tangram mapping: ``project_cell_annotations`` + argmax.

    Parameters
    ----------
    adata_map
        Output of :func:`tangram_map` (its ``obs`` holds the reference's labels).
    labels_key
        Column of the reference's ``obs`` with the cell types.

    Returns
    -------
    Predicted label of each spot.
    """
    import tangram as tg

    spots = AnnData(obs=pd.DataFrame(index=adata_map.var_names.copy()))
    tg.project_cell_annotations(adata_map, spots, annotation=labels_key)
    scores = spots.obsm["tangram_ct_pred"]
    return scores.columns.to_numpy()[np.asarray(scores).argmax(axis=1)].astype(str)


# --------------------------------------------------------------------------------------------
# annotation
# --------------------------------------------------------------------------------------------


def knn_annotate(
    query: AnnData,
    reference: AnnData,
    labels_key: str,
    *,
    n_pcs: int = 30,
    k: int = 15,
    seed: int = 0,
    reference_transform: str = "cp10k_log1p",
) -> np.ndarray:
    """Label transfer by kNN: majority vote of the ``k`` nearest reference cells.

    Neighbours by cosine distance in the joint PCA space of the SpaGE-like imputer
    (:func:`joint_pca` on all shared genes); ties go to the label of the nearer neighbours.

    Parameters
    ----------
    query
        Spatial cells with raw counts.
    reference
        Reference with raw counts and ``obs[labels_key]``.
    labels_key
        Column of ``reference.obs`` with the cell types.
    n_pcs
        Largest number of principal components.
    k
        Neighbours per query cell.
    seed
        Random state of the PCA solver.
    reference_transform
        Reference values of the joint PCA (:func:`reference_features`).

    Returns
    -------
    Predicted label of each query cell.
    """
    genes = shared_genes(query, reference)
    ref_pcs, qry_pcs = joint_pca(query, reference, genes, n_pcs, seed, reference_transform)
    _, idx = cosine_neighbors(qry_pcs, ref_pcs, k)
    codes, names = pd.factorize(reference.obs[labels_key].astype(str))
    n, k = idx.shape
    # one vote per neighbour, plus a tiny bonus for nearer ones that only breaks ties
    weight = 1.0 + 1e-6 * (k - np.arange(k)) / k
    votes = np.zeros((n, len(names)))
    np.add.at(votes, (np.repeat(np.arange(n), k), codes[idx].ravel()), np.tile(weight, n))
    return np.asarray(names)[votes.argmax(axis=1)].astype(str)


def scanvi_annotate(
    query: AnnData,
    reference: AnnData,
    labels_key: str,
    *,
    scvi_epochs: int | None = None,
    scanvi_epochs: int | None = None,
    seed: int = 0,
    train_kwargs: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Label transfer with scANVI on the shared genes' raw counts, dataset as batch.

    The reference (labelled) and the query (``'Unknown'``) are concatenated on the shared
    genes; an scVI model with the scvi-tools defaults is trained, then
    ``SCANVI.from_scvi_model`` (``max_epochs=None`` uses scvi-tools' heuristics). Cells with no
    count in the shared genes are kept: scVI's observed library is then 0; if this makes the
    loss non-finite the error is raised, not hidden.

    Parameters
    ----------
    query
        Spatial cells with raw counts.
    reference
        Reference with raw counts and ``obs[labels_key]``.
    labels_key
        Column of ``reference.obs`` with the cell types.
    scvi_epochs, scanvi_epochs
        Epochs of the two stages (``None``: scvi-tools' defaults).
    seed
        ``scvi.settings.seed``.
    train_kwargs
        Passed to both ``train`` calls.

    Returns
    -------
    Predicted label of each query cell, and the epochs actually run.
    """
    import scvi

    scvi.settings.seed = seed
    genes = shared_genes(query, reference)
    X = sp.vstack(
        [sp.csr_matrix(counts_of(reference, genes)), sp.csr_matrix(counts_of(query, genes))]
    ).astype(np.float32)
    unknown = "Unknown"
    labels = np.concatenate(
        [reference.obs[labels_key].astype(str).to_numpy(), np.full(query.n_obs, unknown)]
    )
    obs = pd.DataFrame(
        {
            "dataset": ["reference"] * reference.n_obs + ["query"] * query.n_obs,
            "label": labels,
        },
        index=[f"ref-{i}" for i in range(reference.n_obs)]
        + [f"qry-{i}" for i in range(query.n_obs)],
    )
    data = AnnData(X.tocsr(), obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    scvi.model.SCVI.setup_anndata(data, batch_key="dataset", labels_key="label")
    kwargs = {"enable_progress_bar": False, **(train_kwargs or {})}
    vae = scvi.model.SCVI(data)
    vae.train(max_epochs=scvi_epochs, **kwargs)
    model = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=unknown, adata=data)
    model.train(max_epochs=scanvi_epochs, **kwargs)
    pred = np.asarray(model.predict(data))[reference.n_obs :].astype(str)
    epochs = {"scvi_epochs": _epochs_run(vae), "scanvi_epochs": _epochs_run(model)}
    return pred, epochs


def _epochs_run(model: Any) -> int | None:
    """Number of epochs in a trained scvi-tools model's history."""
    history = getattr(model, "history", None) or {}
    lengths = [len(v) for v in history.values()]
    return max(lengths) if lengths else None
