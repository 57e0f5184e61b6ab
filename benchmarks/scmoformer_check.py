r"""Preliminary check of ScMoFormer against kNN regression on PCA (GEX -> ADT), pbmc10k_cite.

The split is that of ``benchmarks/multiomics.py``: for each seed, 20 % of the cells are held out
at random (``np.random.default_rng(seed).choice(n, n // 5)``); both methods train on the other
80 % and predict the CLR of the held-out cells' proteins from their RNA counts; scores from
:func:`scfound.metrics.modality_prediction_scores`. This is not the full benchmark (no ScMoGNN,
totalVI or other baselines in the same run): it is the quick comparison recorded in
``docs/scmoformer.md`` until ScMoFormer rows join ``benchmarks/multiomics.py``.

Usage::

    python benchmarks/scmoformer_check.py --seeds 0 1 --max-epochs 40

Writes ``scmoformer_check<tag>.md`` and ``.json`` into ``--out`` (default ``benchmarks/results``).
``--data`` takes another CITE-seq MuData with ``rna`` and ``adt`` modalities and ``counts``
layers (e.g. ``bmmc_cite_starter.h5mu``), ``--model-kwargs`` ScMoFormer settings as JSON (e.g.
the STRING protein graph).
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

import mudata
import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA
from sklearn.neighbors import KNeighborsRegressor

import scfound as sf
from scfound._normalize import log_normalize
from scfound.models.scmognn import normalize_counts

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "pbmc10k_cite.h5mu")


def _clr(counts) -> np.ndarray:
    dense = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
    return normalize_counts(torch.as_tensor(dense, dtype=torch.float32), "clr").numpy()


def _lognorm(counts) -> np.ndarray:
    out = log_normalize(counts, 1e4)
    return out.toarray() if hasattr(out, "toarray") else np.asarray(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--model-kwargs", default="{}", help="JSON")
    parser.add_argument("--train-kwargs", default="{}", help="JSON")
    parser.add_argument("--tag", default="", help="suffix of the output files")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    command = "python benchmarks/scmoformer_check.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    warnings.filterwarnings("ignore")
    sf.settings.progress_bar = False
    cite = mudata.read_h5mu(args.data)
    rows = []
    for seed in args.seeds:
        test = np.zeros(cite.n_obs, dtype=bool)
        rng = np.random.default_rng(seed)
        test[rng.choice(cite.n_obs, cite.n_obs // 5, replace=False)] = True
        reference, query = cite[~test].copy(), cite[test].copy()
        y_train = _clr(reference.mod["adt"].layers["counts"])
        y_test = _clr(query.mod["adt"].layers["counts"])
        x_train = _lognorm(reference.mod["rna"].layers["counts"])
        x_test = _lognorm(query.mod["rna"].layers["counts"])
        start = time.perf_counter()
        pca = PCA(50, random_state=seed).fit(x_train)
        knn = KNeighborsRegressor(15, weights="distance").fit(pca.transform(x_train), y_train)
        preds = {"knn_pca": (knn.predict(pca.transform(x_test)), time.perf_counter() - start)}
        rna = query.mod["rna"].copy()
        start = time.perf_counter()
        model = sf.tl.predict_modality(
            rna,
            reference,
            method="scmoformer",
            layer="counts",
            reference_layer="counts",
            max_epochs=args.max_epochs,
            seed=seed,
            model_kwargs=json.loads(args.model_kwargs),
            train_kwargs=json.loads(args.train_kwargs),
            return_model=True,
        )
        preds["scmoformer"] = (rna.obsm["scmoformer_adt"].to_numpy(), time.perf_counter() - start)
        epochs = len(model.history["train_loss"])
        for method, (pred, seconds) in preds.items():
            scores = sf.metrics.modality_prediction_scores(y_test, pred)
            row = {"seed": seed, "method": method, **scores, "seconds": seconds}
            if method == "scmoformer":
                row["epochs"] = epochs
            rows.append(row)
            print(seed, method, {k: round(v, 4) for k, v in scores.items()}, flush=True)
    table = pd.DataFrame(rows)
    summary = table.groupby("method")[["rmse", "mae", "pearson", "spearman", "seconds"]]
    summary = summary.agg(["mean", "std"]).sort_values(("rmse", "mean"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"scmoformer_check{args.tag}.json"), "w") as handle:
        json.dump({"command": command, "rows": rows}, handle, indent=1)
    lines = [
        "# Preliminary check: ScMoFormer vs kNN on PCA, GEX -> ADT, " + os.path.basename(args.data),
        "",
        f"Command: `{command}`",
        "",
        f"CPU ({torch.get_num_threads()} thread(s)); peak resident memory {peak:.0f} MB. Split of "
        "benchmarks/multiomics.py (20 % of cells held out per seed). Target: CLR proteins. "
        "Mean (std) over seeds; seconds = fit + predict.",
        "",
        "| method | RMSE | MAE | Pearson | Spearman | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for method, row in summary.iterrows():
        cells = [
            f"{row[(c, 'mean')]:.4f} ({row[(c, 'std')]:.4f})"
            for c in ("rmse", "mae", "pearson", "spearman")
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {row[('seconds', 'mean')]:.0f} |")
    lines += ["", "Per seed:", "", table.round(4).to_markdown(index=False), ""]
    with open(os.path.join(args.out, f"scmoformer_check{args.tag}.md"), "w") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
