r"""Modality prediction benchmark: ScMoGNN against the baselines a user would run.

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
* ``mean``: the training mean of each target feature.

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
import time
import warnings
from dataclasses import dataclass
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
from sklearn.metrics import silhouette_score
from sklearn.neighbors import KNeighborsRegressor
from sklearn.neural_network import MLPRegressor
from sklearn.preprocessing import StandardScaler

import scfound as sf
from scfound._normalize import log_normalize
from scfound.models.scmognn import normalize_counts

DATA_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
N_COMPONENTS = 50
#: models of the seed ensemble (``n_models`` of ``tl.predict_modality``)
N_ENSEMBLE = 3
#: samples of ``mop_snareseq.h5mu`` held out (the last 4 of the 12 in sorted order)
MOP_TEST_SAMPLES = 4


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
    obs = data.obs[[c for c in ("cell_type", "batch") if c in data.obs]].copy()
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


def run_baselines(x_train, y_train, x_test, kind: str, seed: int) -> dict:
    """Predictions and wall times of the non-graph baselines."""
    out = {}
    out["mean"] = (np.broadcast_to(y_train.mean(0), (len(x_test), y_train.shape[1])), 0.0)
    start = time.perf_counter()
    n = min(N_COMPONENTS, x_train.shape[1] - 1)
    svd = TruncatedSVD(n, random_state=seed).fit(x_train)
    lin = LinearRegression().fit(svd.transform(x_train), y_train)
    out["svd_linear"] = (lin.predict(svd.transform(x_test)), time.perf_counter() - start)
    start = time.perf_counter()
    p_train, p_test = source_features(x_train, x_test, kind, seed)
    pca_time = time.perf_counter() - start
    start = time.perf_counter()
    ridge = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(p_train, y_train)
    out["ridge_pca"] = (ridge.predict(p_test), pca_time + time.perf_counter() - start)
    start = time.perf_counter()
    knn = KNeighborsRegressor(15, weights="distance").fit(p_train, y_train)
    out["knn_pca"] = (knn.predict(p_test), pca_time + time.perf_counter() - start)
    start = time.perf_counter()
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
    out["mlp_pca"] = (mlp.predict(scaler.transform(p_test)), pca_time + time.perf_counter() - start)
    return out


def matching_accuracy(pred: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """Top-1 nearest-neighbour and Hungarian accuracy of matching ``pred[i]`` to ``measured[i]``."""
    d2 = (pred**2).sum(1)[:, None] + (measured**2).sum(1)[None] - 2 * pred @ measured.T
    truth = np.arange(len(pred))
    top1 = float((d2.argmin(1) == truth).mean())
    rows, cols = linear_sum_assignment(d2)
    return top1, float((cols[np.argsort(rows)] == truth).mean())


def embedding_scores(query, model, x_train, x_test, y_train, y_test, seed: int) -> dict:
    """Cell-type ASW, ``(silhouette + 1) / 2``, of embeddings of the held-out cells."""
    labels = query.mod["rna"].obs["cell_type"].astype(str).to_numpy()
    pca = PCA(N_COMPONENTS, random_state=seed).fit(x_train)
    joint = PCA(N_COMPONENTS, random_state=seed).fit(np.hstack([x_train, y_train]))
    embeddings = {
        "scmognn": model.get_latent_representation(query.mod["rna"], layer="counts"),
        "pca_rna": pca.transform(x_test),
        "pca_rna_adt": joint.transform(np.hstack([x_test, y_test])),
    }
    return {k: (silhouette_score(v, labels) + 1) / 2 for k, v in embeddings.items()}


# ------------------------------------------------------------------ one task
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
    preds = run_baselines(x_train, y_train, x_test, src, seed)
    source_data = query.mod[src].copy()
    max_epochs = None if task.ensemble else args.max_epochs
    models, fit_seconds = [], []
    for i in range(N_ENSEMBLE if task.ensemble else 1):
        start = time.perf_counter()
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
        fit_seconds.append(time.perf_counter() - start)
    preds["scmognn"] = (source_data.obsm["scmognn_seed0"].to_numpy(), fit_seconds[0])
    if task.ensemble:
        sf.tl.predict_modality(source_data, reference, model=models, key_added="scmognn_ens")
        preds[f"scmognn_x{N_ENSEMBLE}"] = (
            source_data.obsm["scmognn_ens"].to_numpy(),
            sum(fit_seconds),
        )
    model = models[0]
    rows = []
    for method, (pred, seconds) in preds.items():
        pred = np.asarray(pred, dtype=np.float32)[:, scored]
        truth = y_test[:, scored]
        scores = sf.metrics.modality_prediction_scores(truth, pred)
        row = {"task": name, "seed": seed, "n_test": query.n_obs, "method": method, **scores}
        if task.extras:
            top1, hungarian = matching_accuracy(pred.astype(np.float64), truth.astype(np.float64))
            row |= {"top1": top1, "hungarian": hungarian}
        row["seconds"] = seconds
        if method == "scmognn":
            row["epochs"] = len(model.history["train_loss"])
        rows.append(row)
        print(name, seed, method, {k: round(v, 4) for k, v in scores.items()}, flush=True)
    extras = None
    if task.extras:
        order = np.random.default_rng(seed).permutation(query.n_obs)
        other = query.mod[tgt][order].copy()
        sf.tl.match_modalities(
            source_data, other, reference, model=model, layer="counts", other_layer="counts"
        )
        score = sf.metrics.matching_score(source_data.obsm["scmognn_matching"], np.argsort(order))
        asw = embedding_scores(query, model, x_train, x_test, y_train, y_test, seed)
        extras = {"task": name, "seed": seed, "matching_score": score, **asw}
        print(name, seed, "matching score", round(score, 4), "ASW", asw, flush=True)
    return rows, extras


# ------------------------------------------------------------------ report
def write_report(result: dict, out: str) -> None:
    """``multiomics.json`` and ``multiomics.md`` of the rows of every task and seed."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "multiomics.json"), "w") as handle:
        json.dump(result, handle, indent=1)
    table = pd.DataFrame(result["rows"])
    seeds = sorted(table["seed"].unique())
    lines = [
        "# Modality prediction: ScMoGNN and baselines, all directions",
        "",
        "Commands:",
        "",
        *[f"    {c}" for c in result["commands"]],
        "",
        f"{result['date']}; CPU, {result['threads']} torch thread(s), `OMP_NUM_THREADS=1`; peak "
        f"resident memory of each run: {', '.join(f'{m:.0f} MB' for m in result['peak_mb'])} "
        "(the whole process; per-method memory was not separated). "
        f"Mean (std) over seeds {', '.join(map(str, seeds))}; seconds = fit + predict, "
        "sharing 2 CPU cores with other jobs. RMSE over all test entries (lower is better); "
        "Pearson/Spearman: mean over the target features of the correlation over test cells; "
        "match top-1 / Hungarian (pbmc10k GEX -> ADT): fraction of test cells whose nearest "
        "(one-to-one assigned) measured target profile is their own. Targets: CLR of "
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
    ]
    for name, group in table.groupby("task", sort=False):
        task = TASKS[name]
        columns = ["rmse", "pearson", "spearman"]
        headers = ["RMSE", "Pearson", "Spearman"]
        if task.extras:
            columns += ["top1", "hungarian"]
            headers += ["match top-1", "match Hungarian"]
        summary = group.groupby("method")[[*columns, "seconds"]].agg(["mean", "std"])
        summary = summary.sort_values(("rmse", "mean"))
        n_test = group.get("n_test", pd.Series([np.nan])).iloc[0]
        lines += [
            f"## {task.title} ({SPLITS[task.split]}; {n_test:.0f} test cells)",
            "",
            "| method | " + " | ".join(headers) + " | seconds |",
            "|---" * (len(headers) + 2) + "|",
        ]
        for method, row in summary.iterrows():
            cells = [f"{row[(c, 'mean')]:.4f} ({row[(c, 'std')]:.4f})" for c in columns]
            lines.append(
                f"| {method} | " + " | ".join(cells) + f" | {row[('seconds', 'mean')]:.0f} |"
            )
        lines.append("")
    if result["extras"]:
        extras = pd.DataFrame(result["extras"])
        lines += [
            "## pbmc10k_cite GEX -> ADT: matching and joint embedding of the held-out cells",
            "",
            "ScMoGNN's `tl.match_modalities` score (probability mass on the true pairs / n; "
            "chance 1/1371 = 0.00073) and cell-type ASW ((silhouette + 1) / 2 on `cell_type`, "
            "higher is better) of ScMoGNN's embedding against PCA (50) of the RNA and of RNA + "
            "CLR proteins:",
            "",
            extras.round(4).to_markdown(index=False),
            "",
        ]
    lines += ["## Per seed", "", table.round(4).to_markdown(index=False), ""]
    with open(os.path.join(out, "multiomics.md"), "w") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--max-epochs", type=int, default=40, help="ScMoGNN epochs (not pbmc)")
    parser.add_argument("--n-peaks", type=int, default=5_000, help="peaks of mop_snareseq")
    parser.add_argument("--json", help="write only this JSON file (into --out), for --combine")
    parser.add_argument("--combine", nargs="+", help="merge JSON files of --json runs")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    command = "OMP_NUM_THREADS=1 python benchmarks/multiomics.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    if args.combine:
        parts = []
        for path in args.combine:
            with open(path if os.path.exists(path) else os.path.join(args.out, path)) as handle:
                parts.append(json.load(handle))
        result = {
            "commands": [c for p in parts for c in p["commands"]] + [command],
            "date": parts[0]["date"],
            "threads": parts[0]["threads"],
            "max_epochs": parts[0]["max_epochs"],
            "n_peaks": parts[0]["n_peaks"],
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
        "max_epochs": args.max_epochs,
        "n_peaks": args.n_peaks,
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
