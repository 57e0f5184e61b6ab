r"""Modality prediction benchmark: ScMoGNN and ScMoFormer against the baselines a user would run.

Tasks (``--tasks``; data from ``../shared/data``), each with its split:

* ``pbmc10k_gex2adt`` and ``pbmc10k_adt2gex``: ``pbmc10k_cite.h5mu`` (6,855 cells, 4,000 genes,
  14 proteins, one donor), 20 % of the cells held out at random (the split depends on the seed);
* ``reapseq_gex2adt``: ``reapseq_pbmc_s4.h5mu`` (3,158 cells, 13,028 genes, 48 antibodies),
  20 % held out at random; the 4 antibodies flagged in ``adt.var["isotype_control"]`` (a blank
  and three isotype controls, which measure background only) are predicted by every method but
  excluded from the metrics;
* ``bmmc_gex2adt``: ``bmmc_cite_starter.h5mu`` (600 cells, 1,000 genes, 134 proteins), the
  official ``obs["is_train"]`` split (fixed; the seed changes only the models); ScMoGNN takes
  minibatches of 64 cells there (the default 512 would make one step per epoch on its 311
  training cells);
* ``mop_gex2atac`` and ``mop_atac2gex``: ``mop_snareseq.h5mu`` (10,309 cells, 1,677 genes,
  25,734 peaks, 12 samples): training on the first 8 samples in sorted order (``09A``-``09H``),
  test on the other 4 (``09I``-``09L``, 3,341 cells). To keep CPU time modest only the
  ``--n-peaks`` (5,000) peaks accessible in most training cells are used, as target and as
  source.

Every method trains on the training cells (paired source and target counts) and predicts the
target of the test cells from their source counts. Targets on the scale ScMoGNN predicts: CLR
of protein counts (``muon``'s), ``log1p`` counts per 10,000 of RNA, binary accessibility of
peaks. Scores: :func:`scfound.metrics.modality_prediction_scores` (RMSE over all entries, the
competition's score; mean per-feature Pearson/Spearman over test cells).

Methods, all in the same run:

* ``scmognn``: ``scfound.tl.predict_modality(..., method="scmognn")`` with its default model;
  at most ``--max-epochs`` epochs (early stopping on a 15 % validation split of the training
  cells) except on ``pbmc10k_gex2adt`` (the verb's default, 200);
* ``scmognn_x3`` (``pbmc10k_gex2adt`` only): the mean of three such models (seeds ``seed``,
  ``seed + 1``, ``seed + 2``; what ``n_models=3`` does; seconds = the three fits);
* ``svd_linear``: the competition baseline, truncated SVD (50) of the normalised source +
  linear regression;
* ``ridge_pca``: PCA (50) of the normalised source + ridge (alpha by efficient leave-one-out);
* ``knn_pca``: the same PCA + k-nearest-neighbour regression (k = 15, distance-weighted);
* ``mlp_pca``: the same PCA, standardised, + a multilayer perceptron (scikit-learn
  ``MLPRegressor``, one hidden layer of 256, at most 100 epochs, early stopping on 10 % of the
  training cells);
* ``mean``: the training mean of each target feature;
* ``scmoformer`` (GEX -> ADT tasks only): ``scfound.tl.predict_modality(...,
  method="scmoformer")`` at its defaults (at most ``--scmoformer-epochs``, default the verb's
  200, with early stopping; gene and protein prior graphs: co-expression), except on
  ``bmmc_gex2adt``: the STRING v11.5 protein graph ``gene_pairs/string_v11.5_bmmc_adt_ppi.tsv``
  and sub-graphs of 128 cells (its 311 training cells);
* ``totalvi`` (GEX -> ADT tasks only): scvi-tools' TOTALVI at its defaults, at most
  ``--totalvi-epochs`` (200) epochs with its early stopping, trained on the training cells
  (RNA + proteins) and the test cells (RNA only, proteins zero, their own batch, so missing);
  prediction: the protein foreground of the test cells in the training batch
  (``get_normalized_expression(transform_batch=..., n_samples=25)``), then CLR. At most
  ``--totalvi-genes`` (4,000) genes: the most variable ones of the training cells where there
  are more (reapseq).

``--methods`` selects methods (default all; ``scmognn`` includes the ensemble and the pbmc10k
extras below), so that a run can be split. ``--scmoformer-ablations`` adds, on
``bmmc_gex2adt``, ScMoFormer rows with one setting changed: ``scmoformer[pe=none]``,
``scmoformer[pe=lappe]`` (the default is ``rwpe``), ``scmoformer[protein_graph=none]`` and
``scmoformer[gene_graph=none]``.

Every row has RMSE, MAE, Pearson and Spearman, the seconds (fit + predict) and the memory of the
method: the peak resident memory of the process while it ran, and that peak minus the resident
memory when it began (sampled by a thread; see ``_multiomics_methods.Measured``). For protein
targets the report lists each method's ten proteins of lowest Pearson over the test cells.

The normalised source of the baselines: ``log1p`` CP10k for RNA, CLR for proteins (with fewer
than 50 proteins, the CLR values themselves instead of their PCA), TF-IDF for peaks (LSI).

On ``pbmc10k_gex2adt`` only, as before: modality matching of the held-out cells (their RNA
against their shuffled proteins) with the ScMoGNN of the run (``sf.tl.match_modalities``,
:func:`scfound.metrics.matching_score`); for every method the accuracy of matching each cell to
the nearest measured target profile of its prediction (``top1``) and of the one-to-one
Hungarian assignment (``hungarian``); and the cell-type ASW of ScMoGNN's embedding of the
held-out cells against PCA of the RNA and of RNA + CLR proteins.

Usage::

    python benchmarks/multiomics.py --seeds 0 1
    # or one process per seed, then merge the two JSON files into the report:
    python benchmarks/multiomics.py --seeds 0 --json multiomics_seed0.json
    python benchmarks/multiomics.py --seeds 1 --json multiomics_seed1.json
    python benchmarks/multiomics.py --combine multiomics_seed0.json multiomics_seed1.json
    # a quick run (tiny epochs):
    python benchmarks/multiomics.py --tasks bmmc_gex2adt --seeds 0 --max-epochs 3 \
        --scmoformer-epochs 3 --totalvi-epochs 3 --scmoformer-ablations --out /tmp/smoke

Writes ``multiomics.md`` and ``multiomics.json`` into ``--out`` (default
``benchmarks/results``), with the command lines at the top.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import sys
import warnings
from dataclasses import dataclass, field
from datetime import datetime

import mudata
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from mudata import MuData
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.linear_model import LinearRegression, RidgeCV
from sklearn.neighbors import KNeighborsRegressor
from sklearn.neural_network import MLPRegressor
from sklearn.preprocessing import StandardScaler

import scfound as sf
from _baselines import wnn_graph  # sibling module of this script
from _multiomics_methods import (  # sibling module of this script
    Measured,
    feature_pearson,
    totalvi_proteins,
    worst_features,
)
from scfound._normalize import log_normalize
from scfound.models.scmognn import normalize_counts
from scfound.tl._methods.scmoformer import MAX_EPOCHS as SCMOFORMER_DEFAULT_EPOCHS

DATA_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
N_COMPONENTS = 50
#: models of the seed ensemble (``n_models`` of ``tl.predict_modality``)
N_ENSEMBLE = 3
#: samples of ``mop_snareseq.h5mu`` held out (the last 4 of the 12 in sorted order)
MOP_TEST_SAMPLES = 4
#: STRING v11.5 graph among the 134 proteins of ``bmmc_cite_starter.h5mu``
STRING_PPI = os.path.join(DATA_DIR, "gene_pairs", "string_v11.5_bmmc_adt_ppi.tsv")
#: the non-graph baselines (see the module docstring)
BASELINES = ("mean", "svd_linear", "ridge_pca", "knn_pca", "mlp_pca")
#: ``--methods`` choices; ``scmoformer`` and ``totalvi`` run on the GEX -> ADT tasks only
METHODS = (*BASELINES, "scmognn", "scmoformer", "totalvi")
#: ``--scmoformer-ablations`` rows on ``bmmc_gex2adt``: row name -> ScMoFormer settings that
#: replace the task's (positional encoding default ``rwpe``, STRING protein graph, co-expression
#: gene graph)
ABLATIONS = {
    "scmoformer[pe=none]": {"positional_encoding": "none"},
    "scmoformer[pe=lappe]": {"positional_encoding": "lappe"},
    "scmoformer[protein_graph=none]": {"protein_graph": None},
    "scmoformer[gene_graph=none]": {"gene_graph": None},
}
ABLATION_TASK = "bmmc_gex2adt"


@dataclass(frozen=True)
class Task:
    """One prediction direction on one dataset, with its train/test split."""

    file: str
    source: str
    target: str
    split: str  # "random20", "is_train" or "samples"
    ensemble: bool = False
    extras: bool = False  # matching and embedding scores (pbmc10k GEX -> ADT)
    title: str = ""
    batch_size: int | None = None  # ScMoGNN cells per step (None: the default, 512)
    #: ScMoFormer cells per sub-graph (None: the default, 512)
    scmoformer_batch_size: int | None = None
    #: ScMoFormer's protein prior graph (None: the model's default, co-expression)
    protein_graph: str | None = None


TASKS = {
    "pbmc10k_gex2adt": Task(
        "pbmc10k_cite.h5mu", "rna", "adt", "random20", True, True, "pbmc10k_cite, GEX -> ADT"
    ),
    "pbmc10k_adt2gex": Task(
        "pbmc10k_cite.h5mu", "adt", "rna", "random20", title="pbmc10k_cite, ADT -> GEX"
    ),
    "reapseq_gex2adt": Task(
        "reapseq_pbmc_s4.h5mu", "rna", "adt", "random20", title="reapseq_pbmc_s4, GEX -> ADT"
    ),
    "bmmc_gex2adt": Task(
        "bmmc_cite_starter.h5mu",
        "rna",
        "adt",
        "is_train",
        title="bmmc_cite_starter, GEX -> ADT",
        batch_size=64,
        scmoformer_batch_size=128,
        protein_graph=STRING_PPI,
    ),
    "mop_gex2atac": Task(
        "mop_snareseq.h5mu", "rna", "atac", "samples", title="mop_snareseq, GEX -> ATAC"
    ),
    "mop_atac2gex": Task(
        "mop_snareseq.h5mu", "atac", "rna", "samples", title="mop_snareseq, ATAC -> GEX"
    ),
}
SPLITS = {
    "random20": "20 % of the cells held out at random (per seed)",
    "is_train": "official `is_train` split",
    "samples": f"train on 8 samples, test on the other {MOP_TEST_SAMPLES}",
}


# ------------------------------------------------------------------ normalisations
def _dense(X) -> np.ndarray:
    return X.toarray() if hasattr(X, "toarray") else np.asarray(X)


def _clr(counts) -> np.ndarray:
    dense = _dense(counts).astype(np.float32)
    return normalize_counts(torch.as_tensor(dense), "clr").numpy()


def _lognorm(counts) -> np.ndarray:
    return _dense(log_normalize(counts, 1e4)).astype(np.float32)


def _tfidf(counts, idf: np.ndarray) -> np.ndarray:
    """ScMoGNN's TF-IDF of peak counts, ``log1p(1e4 * tf * idf)`` (dense float32)."""
    X = sp.csr_matrix(counts, dtype=np.float32)
    rows = np.maximum(np.asarray(X.sum(1)).ravel(), 1e-8)
    X = sp.diags(1.0 / rows) @ X @ sp.diags(idf * 1e4)
    X = sp.csr_matrix(X, dtype=np.float32)
    X.data = np.log1p(X.data)
    return X.toarray()


def normalised(counts, kind: str, idf: np.ndarray | None = None) -> np.ndarray:
    """Counts of one modality on the scale of the benchmark (see the module docstring)."""
    if kind == "adt":
        return _clr(counts)
    if kind == "rna":
        return _lognorm(counts)
    if idf is not None:
        return _tfidf(counts, idf)
    return (_dense(counts) > 0).astype(np.float32)


# ------------------------------------------------------------------ data
def load_task(task: Task, seed: int, n_peaks: int) -> tuple[MuData, MuData, np.ndarray]:
    """Train and test MuData of a task, and the mask of the target features that are scored.

    Both MuData hold the source and the target only, raw counts in ``.X`` and
    ``layers["counts"]``.
    """
    data = mudata.read_h5mu(os.path.join(DATA_DIR, task.file))
    mods = {k: data.mod[k] for k in (task.source, task.target)}
    if task.split == "random20":
        test = np.zeros(data.n_obs, dtype=bool)
        rng = np.random.default_rng(seed)
        test[rng.choice(data.n_obs, data.n_obs // 5, replace=False)] = True
    elif task.split == "is_train":
        test = ~data.obs["is_train"].astype(bool).to_numpy()
    else:
        samples = sorted(data.obs["batch"].astype(str).unique())
        test = data.obs["batch"].astype(str).isin(samples[-MOP_TEST_SAMPLES:]).to_numpy()
    if "atac" in mods and n_peaks < mods["atac"].n_vars:
        counts = sp.csr_matrix(mods["atac"].layers["counts"])[~test]
        frequency = np.asarray((counts > 0).sum(0)).ravel()
        keep = np.sort(np.argsort(-frequency, kind="stable")[:n_peaks])
        mods["atac"] = mods["atac"][:, keep]
    obs = pd.DataFrame(index=data.obs_names)
    for column in ("cell_type", "batch"):  # a MuData column, or the source modality's
        for frame in (data.obs, data.mod[task.source].obs):
            if column in frame and column not in obs:
                obs[column] = frame[column].reindex(data.obs_names).to_numpy()
    parts = []
    for rows in (~test, test):
        adatas = {}
        for name, adata in mods.items():
            adatas[name] = _counts_only(adata, rows)
        md = MuData(adatas)
        for column in obs:
            md.obs[column] = obs.loc[md.obs_names, column].to_numpy()
            for a in md.mod.values():
                a.obs[column] = obs.loc[a.obs_names, column].to_numpy()
        parts.append(md)
    target_var = mods[task.target].var
    if "isotype_control" in target_var:
        scored = ~target_var["isotype_control"].astype(bool).to_numpy()
    else:
        scored = np.ones(target_var.shape[0], dtype=bool)
    return parts[0], parts[1], scored


def _counts_only(adata, rows: np.ndarray):
    """The cells ``rows`` of ``adata`` with only their raw counts (``.X`` and the layer)."""
    from anndata import AnnData

    counts = sp.csr_matrix(adata.layers["counts"][rows], dtype=np.float32)
    out = AnnData(counts, obs=pd.DataFrame(index=adata.obs_names[rows]), var=adata.var.copy())
    out.layers["counts"] = counts.copy()
    return out


# ------------------------------------------------------------------ baselines
def source_features(x_train, x_test, kind: str, seed: int):
    """PCA (50) of the normalised source, or the values themselves for small panels."""
    if kind == "adt" and x_train.shape[1] <= N_COMPONENTS:
        return x_train, x_test
    n = min(N_COMPONENTS, x_train.shape[1] - 1)
    pca = PCA(n, random_state=seed, svd_solver="randomized").fit(x_train)
    return pca.transform(x_train), pca.transform(x_test)


def run_baseline(method: str, x_train, y_train, x_test, kind: str, seed: int) -> np.ndarray:
    """Prediction of one non-graph baseline (``BASELINES``) for the test cells."""
    if method == "mean":
        return np.broadcast_to(y_train.mean(0), (len(x_test), y_train.shape[1]))
    if method == "svd_linear":
        n = min(N_COMPONENTS, x_train.shape[1] - 1)
        svd = TruncatedSVD(n, random_state=seed).fit(x_train)
        lin = LinearRegression().fit(svd.transform(x_train), y_train)
        return lin.predict(svd.transform(x_test))
    # the PCA is fitted again for each method, so that each one's time and memory are its own
    p_train, p_test = source_features(x_train, x_test, kind, seed)
    if method == "ridge_pca":
        ridge = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(p_train, y_train)
        return ridge.predict(p_test)
    if method == "knn_pca":
        knn = KNeighborsRegressor(15, weights="distance").fit(p_train, y_train)
        return knn.predict(p_test)
    if method == "mlp_pca":
        scaler = StandardScaler().fit(p_train)
        mlp = MLPRegressor(
            hidden_layer_sizes=(256,),
            alpha=1e-4,
            learning_rate_init=1e-3,
            batch_size=256,
            max_iter=100,
            early_stopping=True,
            validation_fraction=0.1,
            n_iter_no_change=10,
            random_state=seed,
        ).fit(scaler.transform(p_train), y_train)
        return mlp.predict(scaler.transform(p_test))
    raise ValueError(f"unknown baseline {method!r}")


def matching_accuracy(pred: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """Top-1 nearest-neighbour and Hungarian accuracy of matching ``pred[i]`` to ``measured[i]``."""
    d2 = (pred**2).sum(1)[:, None] + (measured**2).sum(1)[None] - 2 * pred @ measured.T
    truth = np.arange(len(pred))
    top1 = float((d2.argmin(1) == truth).mean())
    rows, cols = linear_sum_assignment(d2)
    return top1, float((cols[np.argsort(rows)] == truth).mean())


def joint_embedding_scores(
    query, embeddings: dict[str, np.ndarray], graphs: dict[str, sp.spmatrix], seed: int
) -> list[dict]:
    """Scores of each embedding and each graph of the held-out cells (no batch: one donor).

    Embeddings: :func:`scfound.metrics.embedding_scores`; graphs:
    :func:`scfound.metrics.graph_clustering_scores`.
    """
    labels = query.mod["rna"].obs["cell_type"].astype(str).to_numpy()
    rows = [
        {"method": name, **sf.metrics.embedding_scores(z, labels, seed=seed)}
        for name, z in embeddings.items()
    ]
    for name, graph in graphs.items():
        scores = sf.metrics.graph_clustering_scores(graph, labels, seed=seed)
        rows.append({"method": name, "nmi": scores["nmi"], "ari": scores["ari"]})
    return rows


# ------------------------------------------------------------------ one task
@dataclass
class Prediction:
    """One method's prediction of the test cells, with its cost and notes for the report."""

    values: np.ndarray
    seconds: float
    peak_mb: float  # highest resident memory of the process while the method ran
    added_mb: float  # peak_mb minus the resident memory when the method began
    info: dict = field(default_factory=dict)

    @classmethod
    def measured(cls, values, cost: Measured, **info) -> Prediction:
        """From a :class:`Measured` block."""
        return cls(np.asarray(values), cost.seconds, cost.peak_mb, cost.added_mb, info)


def graphs_text(graphs: dict) -> str:
    """ScMoFormer's prior graphs (``model.graphs_``) in a few words."""
    gene, protein = graphs["gene_graph"], graphs["protein_graph"]
    return (
        f"genes: {gene['source']} ({gene['n_edges']} edges); proteins: {protein['source']} "
        f"({protein['n_edges']} edges); {graphs['encodes_links']['n_links']} gene-protein links"
    )


def run_scmoformer(
    source_data, reference, task: Task, seed: int, args, key: str, **overrides
) -> Prediction:
    """``tl.predict_modality(method="scmoformer")`` at its defaults, with the task's settings."""
    model_kwargs = {"protein_graph": task.protein_graph} if task.protein_graph else {}
    model_kwargs |= overrides
    train_kwargs = (
        {"batch_size": task.scmoformer_batch_size} if task.scmoformer_batch_size else None
    )
    with Measured() as cost:
        model = sf.tl.predict_modality(
            source_data,
            reference,
            source=task.source,
            target=task.target,
            method="scmoformer",
            layer="counts",
            reference_layer="counts",
            max_epochs=args.scmoformer_epochs,
            seed=seed,
            key_added=key,
            model_kwargs=model_kwargs,
            train_kwargs=train_kwargs,
            return_model=True,
        )
    return Prediction.measured(
        source_data.obsm[key].to_numpy(),
        cost,
        epochs=len(model.history["train_loss"]),
        graphs=graphs_text(model.graphs_),
    )


def run_task(name: str, task: Task, seed: int, args) -> tuple[list[dict], dict | None]:
    """Rows (one per method) of one task and seed, and the pbmc10k extras."""
    reference, query, scored = load_task(task, seed, args.n_peaks)
    src, tgt = task.source, task.target
    idf = None
    if src == "atac":
        counts = sp.csr_matrix(reference.mod[src].layers["counts"])
        idf = (counts.shape[0] / np.maximum(np.asarray(counts.sum(0)).ravel(), 1.0)).astype(
            np.float32
        )
    x_train = normalised(reference.mod[src].layers["counts"], src, idf)
    x_test = normalised(query.mod[src].layers["counts"], src, idf)
    y_train = normalised(reference.mod[tgt].layers["counts"], tgt)
    y_test = normalised(query.mod[tgt].layers["counts"], tgt)
    preds: dict[str, Prediction] = {}
    for method in BASELINES:
        if method in args.methods:
            with Measured() as cost:
                values = run_baseline(method, x_train, y_train, x_test, src, seed)
            preds[method] = Prediction.measured(values, cost)
    source_data = query.mod[src].copy()
    model = None
    if "scmognn" in args.methods:
        max_epochs = None if task.ensemble else args.max_epochs
        models, costs = [], []
        for i in range(N_ENSEMBLE if task.ensemble else 1):
            with Measured() as cost:
                models.append(
                    sf.tl.predict_modality(
                        source_data,
                        reference,
                        source=src,
                        target=tgt,
                        layer="counts",
                        reference_layer="counts",
                        max_epochs=max_epochs,
                        seed=seed + i,
                        key_added=f"scmognn_seed{i}",
                        train_kwargs={"batch_size": task.batch_size} if task.batch_size else None,
                        return_model=True,
                    )
                )
            costs.append(cost)
        model = models[0]
        preds["scmognn"] = Prediction.measured(
            source_data.obsm["scmognn_seed0"].to_numpy(),
            costs[0],
            epochs=len(model.history["train_loss"]),
        )
        if task.ensemble:
            with Measured() as cost:
                sf.tl.predict_modality(
                    source_data, reference, model=models, key_added="scmognn_ens"
                )
            preds[f"scmognn_x{N_ENSEMBLE}"] = Prediction(
                source_data.obsm["scmognn_ens"].to_numpy(),
                sum(c.seconds for c in costs) + cost.seconds,
                max(c.peak_mb for c in [*costs, cost]),
                max(c.added_mb for c in [*costs, cost]),
            )
    protein_task = (src, tgt) == ("rna", "adt")
    if protein_task and "scmoformer" in args.methods:
        preds["scmoformer"] = run_scmoformer(
            source_data, reference, task, seed, args, "scmoformer_adt"
        )
    if protein_task and args.scmoformer_ablations and name == ABLATION_TASK:
        for i, (row_name, overrides) in enumerate(ABLATIONS.items()):
            preds[row_name] = run_scmoformer(
                source_data, reference, task, seed, args, f"scmoformer_ablation{i}", **overrides
            )
    if protein_task and "totalvi" in args.methods:
        with Measured() as cost:
            counts, info, totalvi_latent = totalvi_proteins(
                reference,
                query,
                src,
                tgt,
                max_epochs=args.totalvi_epochs,
                seed=seed,
                n_genes=args.totalvi_genes,
            )
            values = normalised(counts, "adt")  # the CLR of the truth
        preds["totalvi"] = Prediction.measured(values, cost, **info)
    target_names = query.mod[tgt].var_names[scored]
    rows = []
    for method, prediction in preds.items():
        pred = np.asarray(prediction.values, dtype=np.float32)[:, scored]
        truth = y_test[:, scored]
        scores = sf.metrics.modality_prediction_scores(truth, pred)
        row = {"task": name, "seed": seed, "n_test": query.n_obs, "method": method, **scores}
        if task.extras:
            top1, hungarian = matching_accuracy(pred.astype(np.float64), truth.astype(np.float64))
            row |= {"top1": top1, "hungarian": hungarian}
        row |= {
            "seconds": prediction.seconds,
            "peak_mb": prediction.peak_mb,
            "added_mb": prediction.added_mb,
            **prediction.info,
        }
        if tgt == "adt":
            pcc = feature_pearson(truth, pred, target_names)
            row["protein_pearson"] = {k: None if np.isnan(v) else v for k, v in pcc.items()}
        rows.append(row)
        print(name, seed, method, {k: round(v, 4) for k, v in scores.items()}, flush=True)
    extras = None
    if task.extras and model is not None:
        pca = PCA(N_COMPONENTS, random_state=seed).fit(x_train)
        joint = PCA(N_COMPONENTS, random_state=seed).fit(np.hstack([x_train, y_train]))
        embeddings = {
            "scmognn": model.get_latent_representation(query.mod["rna"], layer="counts"),
            "pca_rna": pca.transform(x_test),
            "pca_rna_adt": joint.transform(np.hstack([x_test, y_test])),
        }
        if "totalvi" in preds:
            embeddings["totalvi (RNA only)"] = totalvi_latent
        embedding_rows = joint_embedding_scores(
            query,
            embeddings,
            {"wnn (muon)": wnn_graph({"rna": embeddings["pca_rna"], "adt": y_test}, seed)},
            seed,
        )
        order = np.random.default_rng(seed).permutation(query.n_obs)
        other = query.mod[tgt][order].copy()
        sf.tl.match_modalities(
            source_data, other, reference, model=model, layer="counts", other_layer="counts"
        )
        score = sf.metrics.matching_score(source_data.obsm["scmognn_matching"], np.argsort(order))
        extras = {"task": name, "seed": seed, "matching_score": score, "embedding": embedding_rows}
        print(name, seed, "matching score", round(score, 4), embedding_rows, flush=True)
    return rows, extras


# ------------------------------------------------------------------ report
def _mean_std(row: pd.Series, column: str) -> str:
    mean, std = row[(column, "mean")], row[(column, "std")]
    return f"{mean:.4f}" if np.isnan(std) else f"{mean:.4f} ({std:.4f})"


def write_report(result: dict, out: str) -> None:
    """``multiomics.json`` and ``multiomics.md`` of the rows of every task and seed."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "multiomics.json"), "w") as handle:
        json.dump(result, handle, indent=1)
    table = pd.DataFrame(result["rows"])
    seeds = sorted(table["seed"].unique())
    scmoformer_epochs = result.get("scmoformer_epochs") or SCMOFORMER_DEFAULT_EPOCHS
    lines = [
        "# Modality prediction: ScMoGNN, ScMoFormer and baselines, all directions",
        "",
        "Commands:",
        "",
        *[f"    {c}" for c in result["commands"]],
        "",
        f"{result['date']}; CPU, {result['threads']} torch thread(s), `OMP_NUM_THREADS=1`; peak "
        f"resident memory of each run: {', '.join(f'{m:.0f} MB' for m in result['peak_mb'])} "
        "(the whole process). Per method (all methods run one after the other in one process): "
        "`peak MB` is the highest resident memory of the process while the method ran (sampled "
        "every 20 ms from `/proc/self/statm`), `added MB` that peak minus the resident memory "
        "when the method began (what the method needed on top of the data already loaded; a lower "
        "bound, as memory freed by earlier methods is reused without showing as growth). "
        f"Mean (std) over seeds {', '.join(map(str, seeds))}; seconds = fit + predict, "
        "sharing 2 CPU cores with other jobs. RMSE and MAE over all test entries (lower is "
        "better); Pearson/Spearman: mean over the target features of the correlation over test "
        "cells; match top-1 / Hungarian (pbmc10k GEX -> ADT): fraction of test cells whose "
        "nearest (one-to-one assigned) measured target profile is their own. Targets: CLR of "
        "protein counts, log1p CP10k of RNA, binary peak accessibility. reapseq: the 4 "
        "antibodies flagged "
        "`isotype_control` (Blank, Control_Mouse_IgG2b, Control_Rat_IgG1, Mouse_IgG1) are "
        f"excluded from every metric. mop_snareseq: the {result.get('n_peaks', 5000):,} peaks "
        "accessible in most training cells only. ScMoGNN: one model with the default "
        "architecture, at most "
        f"{result.get('max_epochs', 60)} epochs with early stopping, except pbmc10k GEX -> ADT "
        "(the verb's default 200 epochs with early stopping, and a 3-seed ensemble); on bmmc "
        "(311 training cells) minibatches of 64 cells instead of 512.",
        "",
        "ScMoFormer (GEX -> ADT only): `tl.predict_modality(method='scmoformer')` with the "
        f"model's defaults (positional encoding `rwpe`), at most {scmoformer_epochs} epochs with "
        "early stopping; gene prior graph: the model's default, co-expression of the reference "
        "cells (`gene_graph='auto'`); protein prior graph: co-expression of the reference's CLR "
        "proteins (`'auto'`) on pbmc10k and reapseq, the STRING v11.5 file "
        "`gene_pairs/string_v11.5_bmmc_adt_ppi.tsv` on bmmc, where it also takes sub-graphs of "
        "128 cells instead of 512 (passed as ScMoGNN's 64: `train_kwargs={'batch_size': 128}`). "
        "The graphs each row used are listed under its task. `scmoformer[...]` rows "
        "(`--scmoformer-ablations`, bmmc only): the same model with one setting changed.",
        "",
        "totalVI (GEX -> ADT only; scvi-tools `TOTALVI` at its defaults, at most "
        f"{result.get('totalvi_epochs', 200)} epochs with its early stopping): trained on the "
        "reference cells (RNA + protein counts) and the test cells (RNA counts, proteins set to "
        "zero) concatenated, with a batch column that makes the test cells their own batch, so "
        "that totalVI treats their proteins as missing; prediction: "
        "`get_normalized_expression(transform_batch='reference', n_samples=25)` (protein "
        "foreground, mean of 25 samples), then the CLR of those values (the function applied to "
        "the measured counts). Genes: all of them on pbmc10k (4,000) and bmmc (1,000); on "
        f"reapseq (13,028) the {result.get('totalvi_genes', 4000):,} most variable genes of the "
        "reference cells (scanpy `highly_variable_genes`, flavour `seurat`, on log1p CP10k).",
        "",
    ]
    for name, group in table.groupby("task", sort=False):
        task = TASKS[name]
        columns = [c for c in ("rmse", "mae", "pearson", "spearman") if c in group]
        headers = [c.upper() if c in ("rmse", "mae") else c.capitalize() for c in columns]
        if task.extras:
            columns += ["top1", "hungarian"]
            headers += ["match top-1", "match Hungarian"]
        costs = [c for c in ("seconds", "peak_mb", "added_mb") if c in group]
        summary = group.groupby("method")[[*columns, *costs]].agg(["mean", "std"])
        summary = summary.sort_values(("rmse", "mean"))
        n_test = group.get("n_test", pd.Series([np.nan])).iloc[0]
        cost_headers = {"seconds": "seconds", "peak_mb": "peak MB", "added_mb": "added MB"}
        lines += [
            f"## {task.title} ({SPLITS[task.split]}; {n_test:.0f} test cells)",
            "",
            "| method | " + " | ".join([*headers, *(cost_headers[c] for c in costs)]) + " |",
            "|---" * (len(headers) + len(costs) + 1) + "|",
        ]
        for method, row in summary.iterrows():
            cells = [_mean_std(row, c) for c in columns]
            cells += [
                f"{row[(c, 'mean')]:.1f}" if c == "seconds" else f"{row[(c, 'mean')]:.0f}"
                for c in costs
            ]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
        if "graphs" in group:
            graphs = group.dropna(subset=["graphs"]).drop_duplicates(["method", "graphs"])
            lines += ["Prior graphs of the ScMoFormer rows:", ""]
            lines += [f"- `{r.method}`: {r.graphs}" for r in graphs.itertuples()]
            lines.append("")
        if "protein_pearson" in group:
            with_pcc = group.dropna(subset=["protein_pearson"])
            pcc = pd.DataFrame(
                [
                    {k: np.nan if v is None else v for k, v in d.items()}
                    for d in with_pcc["protein_pearson"]
                ],
                index=with_pcc["method"].to_numpy(),
            )
            worst = worst_features(
                pcc.groupby(level=0).mean().loc[summary.index.intersection(pcc.index)]
            )
            lines += [
                "Ten worst-predicted proteins per method (lowest Pearson over the test cells, "
                "mean over seeds; as the thesis's figure 3.2):",
                "",
                "| method | proteins (Pearson), worst first |",
                "|---|---|",
                *[f"| {method} | {text} |" for method, text in worst.items()],
                "",
            ]
    if result["extras"]:
        extras = pd.DataFrame(result["extras"])
        matching = extras[["task", "seed", "matching_score"]]
        lines += [
            "## pbmc10k_cite GEX -> ADT: matching and joint embedding of the held-out cells",
            "",
            "ScMoGNN's `tl.match_modalities` score (probability mass on the true pairs / n; "
            "chance 1/1371 = 0.00073):",
            "",
            matching.round(4).to_markdown(index=False),
            "",
        ]
        embedding = [
            {"seed": e["seed"], **row} for e in result["extras"] for row in e.get("embedding", [])
        ]
        if embedding:
            frame = pd.DataFrame(embedding)
            metrics = [c for c in frame.columns if c not in ("seed", "method")]
            summary = frame.groupby("method")[metrics].agg(["mean", "std"])
            lines += [
                "Joint embedding of the held-out cells, scored against `cell_type` with "
                "`sf.metrics.embedding_scores` (Leiden NMI/ARI at the best resolution, "
                "cell-type ASW rescaled to [0, 1], scib-metrics; one donor, so no batch "
                "scores) and, for muon's WNN graph (RNA PCA + CLR proteins), "
                "`sf.metrics.graph_clustering_scores`. ScMoGNN and totalVI embed the cells "
                "from their RNA alone (the proteins of the held-out cells are not given to "
                "them); PCA of RNA + ADT and WNN read both modalities. Mean (std) over seeds:",
                "",
                "| method | " + " | ".join(metrics) + " |",
                "|---" * (len(metrics) + 1) + "|",
            ]
            for method, row in summary.sort_values(("nmi", "mean"), ascending=False).iterrows():
                cells = [
                    ""
                    if np.isnan(row[(m, "mean")])
                    else f"{row[(m, 'mean')]:.4f} ({row[(m, 'std')]:.4f})"
                    for m in metrics
                ]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
    per_seed = table.drop(columns=["protein_pearson", "graphs"], errors="ignore")
    lines += ["## Per seed", "", per_seed.round(4).to_markdown(index=False), ""]
    with open(os.path.join(out, "multiomics.md"), "w") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=list(METHODS),
        help="methods to run (scmognn includes its ensemble and the pbmc10k extras)",
    )
    parser.add_argument("--max-epochs", type=int, default=40, help="ScMoGNN epochs (not pbmc)")
    parser.add_argument(
        "--scmoformer-epochs",
        type=int,
        default=None,
        help=f"ScMoFormer epochs at most (default: the verb's, {SCMOFORMER_DEFAULT_EPOCHS})",
    )
    parser.add_argument(
        "--scmoformer-ablations",
        action="store_true",
        help=f"add the ScMoFormer ablation rows on {ABLATION_TASK}",
    )
    parser.add_argument("--totalvi-epochs", type=int, default=200, help="totalVI epochs at most")
    parser.add_argument(
        "--totalvi-genes", type=int, default=4000, help="totalVI genes (HVGs when more)"
    )
    parser.add_argument("--n-peaks", type=int, default=5_000, help="peaks of mop_snareseq")
    parser.add_argument("--json", help="write only this JSON file (into --out), for --combine")
    parser.add_argument("--combine", nargs="+", help="merge JSON files of --json runs")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    command = "OMP_NUM_THREADS=1 python benchmarks/multiomics.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    settings = ("max_epochs", "n_peaks", "scmoformer_epochs", "totalvi_epochs", "totalvi_genes")
    if args.combine:
        parts = []
        for path in args.combine:
            with open(path if os.path.exists(path) else os.path.join(args.out, path)) as handle:
                parts.append(json.load(handle))
        for key in settings:
            values = {json.dumps(p.get(key)) for p in parts}
            if len(values) > 1:
                warnings.warn(f"the runs differ in {key}: {sorted(values)}", stacklevel=1)
        result = {
            "commands": [c for p in parts for c in p["commands"]] + [command],
            "date": parts[0]["date"],
            "threads": parts[0]["threads"],
            **{key: parts[0].get(key) for key in settings},
            "peak_mb": [m for p in parts for m in p["peak_mb"]],
            "rows": [r for p in parts for r in p["rows"]],
            "extras": [e for p in parts for e in p["extras"]],
        }
        write_report(result, args.out)
        return
    warnings.filterwarnings("ignore")
    sf.settings.progress_bar = False
    rows, extras = [], []
    for name in args.tasks:
        for seed in args.seeds:
            task_rows, task_extras = run_task(name, TASKS[name], seed, args)
            rows += task_rows
            if task_extras:
                extras.append(task_extras)
    result = {
        "commands": [command],
        "date": f"{datetime.now():%Y-%m-%d %H:%M}",
        "threads": torch.get_num_threads(),
        **{key: getattr(args, key) for key in settings},
        "peak_mb": [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024],
        "rows": rows,
        "extras": extras,
    }
    if args.json:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, args.json), "w") as handle:
            json.dump(result, handle, indent=1)
        return
    write_report(result, args.out)


if __name__ == "__main__":
    main()
