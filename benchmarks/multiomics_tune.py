r"""Tuning of ScMoGNN's defaults for GEX -> ADT on a validation split of the reference cells.

The benchmark's seed-0 split of ``pbmc10k_cite.h5mu`` holds out 20 % of the cells as the test
set; this script never reads them. It splits the other 80 % (the reference) once more: 15 % of
the reference cells validate, ScMoGNN (through ``sf.tl.predict_modality``) trains on the rest, and
each configuration is scored on the validation cells, next to kNN regression on PCA fitted on the
same cells.

Usage::

    python benchmarks/multiomics_tune.py --config '{"model_kwargs": {}, "train_kwargs": {}}' ...

Each ``--config`` is a JSON object with ``model_kwargs``, ``train_kwargs`` and ``max_epochs``;
one line per configuration is appended to ``--out`` (default
``benchmarks/results/multiomics_tuning.md``) with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import warnings

import mudata
import numpy as np

import scfound as sf
from multiomics import DATA, _clr, _lognorm, run_baselines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=[])
    parser.add_argument("--data", default=DATA)
    parser.add_argument(
        "--ensemble", action="store_true", help="also score the mean of all configs' predictions"
    )
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "multiomics_tuning.md")
    )
    args = parser.parse_args(argv)
    command = "python benchmarks/multiomics_tune.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    warnings.filterwarnings("ignore")
    sf.settings.progress_bar = False
    cite = mudata.read_h5mu(args.data)
    test = np.zeros(cite.n_obs, dtype=bool)  # the benchmark's seed-0 test cells: never read
    test[np.random.default_rng(0).choice(cite.n_obs, cite.n_obs // 5, replace=False)] = True
    reference = cite[~test]
    val = np.random.default_rng(100).random(reference.n_obs) < 0.15
    train, valid = reference[~val].copy(), reference[val].copy()
    y_val = _clr(valid.mod["adt"].layers["counts"])
    lines = []
    base = run_baselines(
        _lognorm(train.mod["rna"].layers["counts"]),
        _clr(train.mod["adt"].layers["counts"]),
        _lognorm(valid.mod["rna"].layers["counts"]),
        0,
    )
    knn = sf.metrics.modality_prediction_scores(y_val, base["knn_pca"][0])
    lines.append(f"| knn_pca | | {knn['rmse']:.4f} | {knn['pearson']:.4f} | | |")
    print(lines[-1], flush=True)
    predictions = []
    for text in args.config:
        config = json.loads(text)
        rna = valid.mod["rna"].copy()
        start = time.perf_counter()
        model = sf.tl.predict_modality(
            rna,
            train,
            source="rna",
            target="adt",
            layer="counts",
            reference_layer="counts",
            max_epochs=config.get("max_epochs"),
            model_kwargs=config.get("model_kwargs"),
            train_kwargs=config.get("train_kwargs"),
            seed=config.get("seed", 0),
            return_model=True,
        )
        seconds = time.perf_counter() - start
        predictions.append(rna.obsm["scmognn_adt"].to_numpy())
        scores = sf.metrics.modality_prediction_scores(y_val, predictions[-1])
        epochs = len(model.history["train_loss"])
        lines.append(
            f"| scmognn | `{text}` | {scores['rmse']:.4f} | {scores['pearson']:.4f} | "
            f"{epochs} | {seconds:.0f} |"
        )
        print(lines[-1], flush=True)
    if args.ensemble:
        mean = np.mean(predictions, axis=0)
        scores = sf.metrics.modality_prediction_scores(y_val, mean)
        lines.append(
            f"| scmognn | mean of the above | {scores['rmse']:.4f} | {scores['pearson']:.4f} | | |"
        )
        print(lines[-1], flush=True)
    with open(args.out, "a") as handle:
        handle.write(f"\nCommand: `{command}`\n\n")
        handle.write("| method | config | val RMSE | val Pearson | epochs | seconds |\n")
        handle.write("|---|---|---|---|---|---|\n")
        handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
