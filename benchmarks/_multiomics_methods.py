"""Helpers of ``benchmarks/multiomics.py``: per-method time and memory, totalVI, worst proteins.

* :class:`Measured`: wall time and resident-memory high-water mark of one method, sampled by a
  background thread from ``/proc/self/statm`` (every 20 ms), so that each method of a run gets
  its own peak (``ru_maxrss`` only grows over the whole process);
* :func:`totalvi_proteins`: scvi-tools' TOTALVI trained on reference (RNA + proteins) and query
  (RNA only) cells, predicting the query's proteins;
* :func:`feature_pearson`, :func:`worst_features`: per-feature Pearson correlation over test
  cells, and the features where it is lowest (the thesis's figure 3.2).
"""

from __future__ import annotations

import gc
import os
import threading
import time
from types import TracebackType

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from mudata import MuData

import scfound as sf
from scfound._normalize import log_normalize

_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_mb() -> float:
    """Current resident memory of this process in MB (Linux ``/proc``)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE_MB


class Measured:
    """Time and peak resident memory of the code in a ``with`` block.

    After the block: ``seconds`` (wall time), ``start_mb`` (resident memory when it began),
    ``peak_mb`` (highest resident memory seen while it ran, sampled every ``interval`` seconds)
    and ``added_mb = peak_mb - start_mb``, the memory the method needed on top of what the
    process already held.

    Parameters
    ----------
    interval
        Seconds between two samples of the resident memory.
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.seconds = self.start_mb = self.peak_mb = self.added_mb = float("nan")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __enter__(self) -> Measured:
        gc.collect()
        self.start_mb = self.peak_mb = rss_mb()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.seconds = time.perf_counter() - self._start
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())
        self.added_mb = self.peak_mb - self.start_mb


def hvg_names(counts: sp.spmatrix | np.ndarray, names: pd.Index, n_top: int) -> pd.Index:
    """The ``n_top`` most variable genes (scanpy's ``"seurat"`` flavour on log1p CP10k)."""
    import scanpy as sc

    adata = AnnData(sp.csr_matrix(log_normalize(counts, 1e4), dtype=np.float32))
    adata.var_names = names
    sc.pp.highly_variable_genes(adata, n_top_genes=n_top, flavor="seurat")
    return names[adata.var["highly_variable"].to_numpy()]


def totalvi_proteins(
    reference: MuData,
    query: MuData,
    source: str,
    target: str,
    *,
    max_epochs: int,
    seed: int,
    n_genes: int = 4000,
    n_samples: int = 25,
) -> tuple[np.ndarray, dict, np.ndarray]:
    """Proteins of the query cells predicted by totalVI, on the count scale, and their latent.

    The reference (RNA + protein counts) and query cells (RNA counts, proteins all zero) are
    concatenated with a batch column ``"reference"``/``"query"``: totalVI treats the proteins of
    a batch where they are all zero as missing. Predictions: the mean of ``n_samples`` draws of
    the normalised protein expression of the query cells in the reference batch
    (``get_normalized_expression(transform_batch="reference")``, foreground only).

    Parameters
    ----------
    reference, query
        MuData with the source (RNA) and target (protein) modalities, counts in
        ``layers["counts"]``; the query's target is not read.
    source, target
        Modality names.
    max_epochs
        Training epochs at most (scvi-tools' early stopping on the validation ELBO is on).
    seed
        ``scvi.settings.seed``.
    n_genes
        With more genes than this, only the ``n_genes`` most variable genes of the reference
        are used (:func:`hvg_names`).
    n_samples
        Posterior samples averaged for the prediction.

    Returns
    -------
    Query cells x proteins (float32), ``{"n_genes": ..., "epochs": ...}`` and the query
    cells' totalVI latent representation (from their RNA; their proteins are missing).
    """
    import scvi
    from scvi.model import TOTALVI

    from scfound.models.base._training import quiet_lightning

    rna_ref, rna_query = reference.mod[source], query.mod[source]
    genes = rna_ref.var_names
    ref_counts = sp.csr_matrix(rna_ref.layers["counts"], dtype=np.float32)
    if len(genes) > n_genes:
        genes = hvg_names(ref_counts, rna_ref.var_names, n_genes)
    columns = rna_ref.var_names.get_indexer(genes)
    query_counts = sp.csr_matrix(
        rna_query[:, genes].layers["counts"], dtype=np.float32
    )  # same gene order
    X = sp.vstack([ref_counts[:, columns], query_counts]).tocsr()
    n_ref, n_query = rna_ref.n_obs, rna_query.n_obs
    obs_names = [f"ref{i}" for i in range(n_ref)] + [f"query{i}" for i in range(n_query)]
    batch = ["reference"] * n_ref + ["query"] * n_query
    adata = AnnData(X, obs=pd.DataFrame({"totalvi_batch": batch}, index=obs_names))
    adata.var_names = genes
    adata.layers["counts"] = X
    proteins = reference.mod[target].layers["counts"]
    proteins = proteins.toarray() if hasattr(proteins, "toarray") else np.asarray(proteins)
    adata.obsm["protein_expression"] = pd.DataFrame(
        np.vstack([proteins, np.zeros((n_query, proteins.shape[1]), dtype=proteins.dtype)]),
        index=obs_names,
        columns=reference.mod[target].var_names,
    )
    scvi.settings.seed = seed
    with quiet_lightning():
        TOTALVI.setup_anndata(
            adata,
            layer="counts",
            protein_expression_obsm_key="protein_expression",
            batch_key="totalvi_batch",
        )
        model = TOTALVI(adata)
        model.train(max_epochs=max_epochs, enable_progress_bar=sf.settings.progress_bar)
    _, predicted = model.get_normalized_expression(
        adata,
        indices=np.arange(n_ref, n_ref + n_query),
        transform_batch="reference",
        n_samples=n_samples,
        return_mean=True,
        return_numpy=True,
    )
    info = {"n_genes": len(genes), "epochs": len(model.history["elbo_train"])}
    latent = model.get_latent_representation(adata, indices=np.arange(n_ref, n_ref + n_query))
    return np.asarray(predicted, dtype=np.float32), info, latent


def feature_pearson(truth: np.ndarray, predicted: np.ndarray, names: pd.Index) -> pd.Series:
    """Pearson correlation over the test cells of every feature (NaN where undefined)."""
    return sf.metrics.heldout_gene_scores(truth, predicted, list(names))["pcc"]


def worst_features(pearson: pd.DataFrame, n: int = 10) -> dict[str, str]:
    """The ``n`` features of lowest Pearson per method, as text.

    Parameters
    ----------
    pearson
        Methods x features, e.g. the mean over seeds of :func:`feature_pearson`.
    n
        Features per method.

    Returns
    -------
    ``{method: "NAME (r), ..."}``, lowest first; methods whose correlations are all undefined
    (a constant prediction) are left out.
    """
    out = {}
    for method, row in pearson.iterrows():
        row = row.dropna().sort_values()
        if len(row):
            out[method] = ", ".join(f"{k} ({v:.2f})" for k, v in row.iloc[:n].items())
    return out
