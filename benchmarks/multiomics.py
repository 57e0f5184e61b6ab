r"""Modality prediction benchmark: ScMoGNN against the baselines a user would run (GEX -> ADT).

Data: ``pbmc10k_cite.h5mu`` (6,855 cells, 4,000 genes, 14 proteins, one donor) from
``../shared/data``. For each seed, 20 % of the cells are held out at random; every method trains on
the other 80 % (paired RNA and protein counts) and predicts the proteins of the held-out cells
from their RNA counts. The target is the CLR of the protein counts (``muon``'s definition, as
ScMoGNN predicts it); predictions are scored with
:func:`scfound.metrics.modality_prediction_scores` (RMSE over all entries, the competition's
score, and mean per-protein Pearson/Spearman).

Methods, all in the same run:

* ``scmognn``: ``scfound.tl.predict_modality(..., method="scmognn")`` with its defaults;
* ``scmognn_x3``: the mean of three such models trained with seeds ``seed``, ``seed + 1`` and
  ``seed + 2`` (what ``n_models=3`` does; seconds = the three fits);
* ``svd_linear``: the competition baseline, truncated SVD (50) of log-normalised RNA + linear
  regression;
* ``ridge_pca``: PCA (50) + ridge regression (alpha chosen by 5-fold CV on the training cells);
* ``knn_pca``: PCA (50) + k-nearest-neighbour regression (k = 15, distance-weighted);
* ``mean``: the training mean of each protein.

Modality matching on the same held-out cells (their RNA against their shuffled proteins, one
batch): ``sf.tl.match_modalities`` with the ScMoGNN of the prediction run (``model=``), scored by
:func:`scfound.metrics.matching_score` (probability mass on the true pairs / n); and, for every
method, the temperature-free accuracy of matching each cell to the nearest measured protein
profile of its prediction (``top1``) and of the one-to-one Hungarian assignment on the same
distances (``hungarian``).

Joint embedding of the held-out cells: cell-type silhouette (``(ASW + 1) / 2`` on
``obs["cell_type"]``) of ScMoGNN's cell states (``get_latent_representation``) against PCA (50)
of the RNA and PCA of the RNA and CLR proteins concatenated (both fitted on the training cells).

Usage::

    python benchmarks/multiomics.py --seeds 0 1

Writes ``multiomics.md`` and ``multiomics.json`` into ``--out`` (default
``benchmarks/results``), with the command line at the top.
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
from datetime import datetime

import mudata
import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.linear_model import LinearRegression, RidgeCV
from sklearn.metrics import silhouette_score
from sklearn.neighbors import KNeighborsRegressor

import scfound as sf
from scfound._normalize import log_normalize
from scfound.models.scmognn import normalize_counts

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "pbmc10k_cite.h5mu")
N_COMPONENTS = 50
#: models of the seed ensemble (``n_models`` of ``tl.predict_modality``)
N_ENSEMBLE = 3


def _clr(counts) -> np.ndarray:
    dense = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
    return normalize_counts(torch.as_tensor(dense, dtype=torch.float32), "clr").numpy()


def _lognorm(counts) -> np.ndarray:
    out = log_normalize(counts, 1e4)
    return out.toarray() if hasattr(out, "toarray") else np.asarray(out)


def run_baselines(x_train, y_train, x_test, seed: int) -> dict[str, tuple[np.ndarray, float]]:
    """Predictions and wall times of the non-graph baselines."""
    out = {}
    start = time.perf_counter()
    out["mean"] = (np.broadcast_to(y_train.mean(0), (len(x_test), y_train.shape[1])), 0.0)
    svd = TruncatedSVD(N_COMPONENTS, random_state=seed).fit(x_train)
    lin = LinearRegression().fit(svd.transform(x_train), y_train)
    out["svd_linear"] = (lin.predict(svd.transform(x_test)), time.perf_counter() - start)
    start = time.perf_counter()
    pca = PCA(N_COMPONENTS, random_state=seed).fit(x_train)
    p_train, p_test = pca.transform(x_train), pca.transform(x_test)
    ridge = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(p_train, y_train)
    pca_time = time.perf_counter() - start
    out["ridge_pca"] = (ridge.predict(p_test), pca_time)
    start = time.perf_counter()
    knn = KNeighborsRegressor(15, weights="distance").fit(p_train, y_train)
    out["knn_pca"] = (knn.predict(p_test), pca_time + time.perf_counter() - start)
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
    joint_train = np.hstack([x_train, y_train])
    joint = PCA(N_COMPONENTS, random_state=seed).fit(joint_train)
    embeddings = {
        "scmognn": model.get_latent_representation(query.mod["rna"], layer="counts"),
        "pca_rna": pca.transform(x_test),
        "pca_rna_adt": joint.transform(np.hstack([x_test, y_test])),
    }
    return {k: (silhouette_score(v, labels) + 1) / 2 for k, v in embeddings.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--max-epochs", type=int, default=None, help="ScMoGNN epochs (default)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    command = "python benchmarks/multiomics.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    warnings.filterwarnings("ignore")
    sf.settings.progress_bar = False
    cite = mudata.read_h5mu(args.data)
    rows, embed_rows = [], []
    for seed in args.seeds:
        test = np.zeros(cite.n_obs, dtype=bool)
        rng = np.random.default_rng(seed)
        test[rng.choice(cite.n_obs, cite.n_obs // 5, replace=False)] = True
        reference, query = cite[~test].copy(), cite[test].copy()
        y_train = _clr(reference.mod["adt"].layers["counts"])
        y_test = _clr(query.mod["adt"].layers["counts"])
        x_train = _lognorm(reference.mod["rna"].layers["counts"])
        x_test = _lognorm(query.mod["rna"].layers["counts"])
        preds = run_baselines(x_train, y_train, x_test, seed)
        rna = query.mod["rna"].copy()
        models, fit_seconds = [], []
        for i in range(N_ENSEMBLE):  # the single model (seed) and the seed ensemble
            start = time.perf_counter()
            models.append(
                sf.tl.predict_modality(
                    rna,
                    reference,
                    source="rna",
                    target="adt",
                    layer="counts",
                    reference_layer="counts",
                    max_epochs=args.max_epochs,
                    seed=seed + i,
                    key_added=f"scmognn_seed{i}",
                    return_model=True,
                )
            )
            fit_seconds.append(time.perf_counter() - start)
        preds["scmognn"] = (rna.obsm["scmognn_seed0"].to_numpy(), fit_seconds[0])
        sf.tl.predict_modality(rna, reference, model=models, key_added="scmognn_adt")
        preds[f"scmognn_x{N_ENSEMBLE}"] = (rna.obsm["scmognn_adt"].to_numpy(), sum(fit_seconds))
        model = models[0]
        epochs = len(model.history["train_loss"])
        for method, (pred, seconds) in preds.items():
            scores = sf.metrics.modality_prediction_scores(y_test, pred)
            top1, hungarian = matching_accuracy(np.asarray(pred, dtype=np.float64), y_test)
            scores |= {"top1": top1, "hungarian": hungarian}
            rows.append({"seed": seed, "method": method, **scores, "seconds": seconds})
            print(seed, method, {k: round(v, 4) for k, v in scores.items()}, flush=True)
        rows[-2]["epochs"] = epochs
        # modality matching with the trained model: the held-out RNA against shuffled proteins
        order = np.random.default_rng(seed).permutation(query.n_obs)
        adt = query.mod["adt"][order].copy()
        sf.tl.match_modalities(
            rna, adt, reference, model=model, layer="counts", other_layer="counts"
        )
        score = sf.metrics.matching_score(rna.obsm["scmognn_matching"], np.argsort(order))
        rows[-2]["matching_score"] = score
        asw = embedding_scores(query, model, x_train, x_test, y_train, y_test, seed)
        embed_rows.append({"seed": seed, **asw})
        print(seed, "matching score", round(score, 4), "ASW", asw, flush=True)
    table = pd.DataFrame(rows)
    columns = ["rmse", "pearson", "spearman", "top1", "hungarian", "seconds"]
    summary = table.groupby("method")[columns].agg(["mean", "std"])
    summary = summary.sort_values(("rmse", "mean"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "multiomics.json"), "w") as handle:
        json.dump({"command": command, "rows": rows, "embedding": embed_rows}, handle, indent=1)
    lines = [
        "# Modality prediction, GEX -> ADT, pbmc10k_cite (20 % of cells held out)",
        "",
        f"Command: `{command}`",
        "",
        f"Run {datetime.now():%Y-%m-%d %H:%M}; CPU ({torch.get_num_threads()} threads); peak "
        f"resident memory of the whole run {peak:.0f} MB. Target: CLR of the protein counts. "
        "RMSE over all entries (lower is better); Pearson/Spearman: mean over the 14 proteins "
        "of the correlation over held-out cells. Mean (std) over seeds "
        f"{', '.join(map(str, args.seeds))}; seconds = fit + predict.",
        "",
        "| method | RMSE | Pearson | Spearman | match top-1 | match Hungarian | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, row in summary.iterrows():
        cells = [
            f"{row[(c, 'mean')]:.4f} ({row[(c, 'std')]:.4f})"
            for c in ("rmse", "pearson", "spearman", "top1", "hungarian")
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {row[('seconds', 'mean')]:.0f} |")
    n_query = cite.n_obs // 5
    lines += [
        "",
        f"Matching ({n_query} held-out cells, chance 1/{n_query} = {1 / n_query:.5f}): match "
        "top-1 / Hungarian = fraction of cells whose nearest (one-to-one assigned) measured "
        "protein profile is their own. ScMoGNN's `tl.match_modalities` score (probability mass "
        "on the true pairs / n): "
        + ", ".join(
            f"seed {r['seed']}: {r['matching_score']:.4f}" for r in rows if "matching_score" in r
        )
        + ".",
        "",
        "Joint embedding of the held-out cells, cell-type ASW ((silhouette + 1) / 2 on "
        "`cell_type`, higher is better):",
        "",
        pd.DataFrame(embed_rows).round(4).to_markdown(index=False),
        "",
        "Per seed:",
        "",
        table.round(4).to_markdown(index=False),
        "",
    ]
    with open(os.path.join(args.out, "multiomics.md"), "w") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
