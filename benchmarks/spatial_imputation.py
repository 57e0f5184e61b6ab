"""Masked-entry spatial imputation benchmark: SpaFormer against baselines (SpaFormer protocol).

For each dataset and seed, 30 % of all count entries (zeros included) are held out with
:func:`scfound.pp.mask_entries` (no cell with counts is left empty). Every method sees only the
observed matrix ``layers['heldout_counts']`` (plus coordinates or FOVs where it uses them) and
returns an imputation on the count scale; it is scored on the held-out entries with
:func:`scfound.metrics.imputation_scores` (per-cell normalisation to the median library of the
true counts, log1p, all held-out entries pooled). Ablations of SpaFormer (positional encodings,
bi-level mask rates, decoder and latent) reuse the same held-out mask (osmFISH only).

The 3-D case (``--datasets synthetic3d``) is a synthetic volume
(``sf.datasets.synthetic_spatial(..., n_dims=3)``: 3-D domains and a field that varies along z
as along x and y). Every baseline runs on x, y, z; the spatial kNN, the tuned blend and SpaFormer
also run on x, y only (``*_xy``: z dropped) to show what z adds; the positional-encoding
ablation runs there too.

Usage::

    python benchmarks/spatial_imputation.py                     # both datasets, ablations on
    python benchmarks/spatial_imputation.py --datasets osmfish --seeds 0 1 2 --no-ablations
    python benchmarks/spatial_imputation.py --methods spatial_knn tuned_blend spaformer
    python benchmarks/spatial_imputation.py --quick --out /tmp/bench_quick   # smoke test
    python benchmarks/spatial_imputation.py --datasets synthetic3d --seeds 0 1 \
        --out benchmarks/results/spatial_imputation_3d                      # 3-D volume

Writes ``spatial_imputation.csv``, ``spatial_imputation_ablations.csv`` and
``spatial_imputation.md`` into ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

import _baselines as baselines  # sibling module of this script
import scfound as sf
from scfound.metrics import imputation_scores

HELDOUT_FRACTION = 0.3

#: size of the synthetic volume of the 3-D case
VOLUME_CELLS, VOLUME_GENES = 1500, 50


def synthetic_volume() -> AnnData:
    """The synthetic 3-D volume (the same data for every seed; the held-out mask varies)."""
    return sf.datasets.synthetic_spatial(
        n_cells=VOLUME_CELLS, n_genes=VOLUME_GENES, n_groups=6, seed=0, n_dims=3
    )


#: dataset name -> (loader, FOV column or None: SpaFormer then tiles the section itself)
DATASETS: dict[str, tuple[Callable[[], AnnData], str | None]] = {
    "osmfish": (sf.datasets.osmfish, None),
    "cosmx": (sf.datasets.cosmx_lung12_mini, "fov"),
    "synthetic3d": (synthetic_volume, None),
}

DATASET_TITLES = {
    "osmfish": "osmFISH mouse somatosensory cortex (4,363 cells x 33 genes, one section)",
    "cosmx": "CosMx NSCLC Lung12 mini (120 cells x 960 genes, 2 FOVs)",
    "synthetic3d": (
        f"Synthetic 3-D volume ({VOLUME_CELLS:,} cells x {VOLUME_GENES} genes, x, y, z; "
        "SpaFormer on blocks of about 500 cells)"
    ),
}

#: datasets with ablations -> ablation groups run there
ABLATION_DATASETS = {"osmfish": None, "synthetic3d": ["positional encoding"]}


@dataclass
class Task:
    """One dataset with its held-out mask, and the run settings the methods need."""

    adata: AnnData
    dataset: str
    seed: int
    group_key: str | None
    max_epochs: int
    scvi_max_epochs: int

    @property
    def obs(self) -> Any:
        """Observed counts (held-out entries are zeros)."""
        return self.adata.layers["heldout_counts"]

    @property
    def coords(self) -> np.ndarray:
        """Cell coordinates."""
        return np.asarray(self.adata.obsm["spatial"])

    @property
    def coords_xy(self) -> np.ndarray:
        """x, y only (z dropped)."""
        return self.coords[:, :2]


Result = tuple[np.ndarray, dict[str, Any]]


# --------------------------------------------------------------------------------------------
# methods: each takes a Task and returns (imputed counts, parameters to record)
# --------------------------------------------------------------------------------------------


def run_zero_fill(task: Task) -> Result:
    return baselines.zero_fill(task.obs), {}


def run_gene_mean(task: Task) -> Result:
    return baselines.gene_mean(task.obs), {}


def run_expression_knn(task: Task) -> Result:
    params = {"k": 15, "weighted": False, "n_pcs": 15}
    return baselines.expression_knn(task.obs, seed=task.seed, **params), params


def run_spatial_knn(task: Task) -> Result:
    params = {"k": 10, "weighted": False}
    return baselines.spatial_knn(task.obs, task.coords, **params), params


def run_tuned_blend(task: Task) -> Result:
    return baselines.tuned_knn_blend(task.obs, task.coords, seed=task.seed)


def run_spatial_knn_xy(task: Task) -> Result:
    params = {"k": 10, "weighted": False, "axes": "x, y"}
    return baselines.spatial_knn(task.obs, task.coords_xy, k=10, weighted=False), params


def run_tuned_blend_xy(task: Task) -> Result:
    imputed, params = baselines.tuned_knn_blend(task.obs, task.coords_xy, seed=task.seed)
    return imputed, {**params, "axes": "x, y"}


def run_scvi(task: Task) -> Result:
    imputed = baselines.scvi_impute(
        task.obs,
        seed=task.seed,
        max_epochs=task.scvi_max_epochs,
        train_kwargs={"enable_progress_bar": False},
    )
    params = {
        "n_hidden": 128,
        "n_layers": 1,
        "gene_likelihood": "nb",
        "max_epochs": task.scvi_max_epochs,
    }
    return imputed, params


def spaformer_impute(task: Task, model_kwargs: dict[str, Any], key_added: str) -> Result:
    """Train a SpaFormer (or SpaGAT) on the observed counts with ``sf.tl.impute``."""
    sf.tl.impute(
        task.adata,
        layer="heldout_counts",
        group_key=task.group_key,
        max_epochs=task.max_epochs,
        model_kwargs=model_kwargs,
        train_kwargs={"enable_progress_bar": False},
        seed=task.seed,
        key_added=key_added,
    )
    imputed = np.asarray(task.adata.layers.pop(key_added), dtype=np.float32)
    run = task.adata.uns["scfound"]["impute"][key_added]
    params = {
        "model_kwargs": model_kwargs,
        "group_key": task.group_key or "spatial tiles",
        "max_epochs": task.max_epochs,
        "epochs": int(run.get("epochs", task.max_epochs)),
    }
    return imputed, params


def run_spagat(task: Task) -> Result:
    return spaformer_impute(task, {"encoder": "gat", "pos_encoding": "none"}, "spagat_imputed")


def run_spaformer(task: Task) -> Result:
    return spaformer_impute(task, {}, "spaformer_imputed")


def run_spaformer_xy(task: Task) -> Result:
    """SpaFormer on x, y only: the same tiles (cut in 3-D), z dropped from its coordinates."""
    xyz = task.adata.obsm["spatial"]
    if task.group_key is None:
        sf.pp.spatial_tiles(task.adata, n_tiles=max(1, round(task.adata.n_obs / 500)))
    task.adata.obsm["spatial_xy"] = np.ascontiguousarray(np.asarray(xyz)[:, :2])
    try:
        sf.tl.impute(
            task.adata,
            layer="heldout_counts",
            spatial_key="spatial_xy",
            group_key=task.group_key or "spatial_tile",
            max_epochs=task.max_epochs,
            train_kwargs={"enable_progress_bar": False},
            seed=task.seed,
            key_added="spaformer_xy_imputed",
        )
    finally:
        del task.adata.obsm["spatial_xy"]
        if task.group_key is None:
            del task.adata.obs["spatial_tile"]
    imputed = np.asarray(task.adata.layers.pop("spaformer_xy_imputed"), dtype=np.float32)
    return imputed, {"axes": "x, y", "max_epochs": task.max_epochs}


#: method name -> (display name, runner); the order is the order of the tables
METHODS: dict[str, tuple[str, Callable[[Task], Result]]] = {
    "zero_fill": ("Zero fill (unimputed)", run_zero_fill),
    "gene_mean": ("Gene mean", run_gene_mean),
    "expression_knn": ("Expression kNN (k=15)", run_expression_knn),
    "spatial_knn": ("Spatial kNN (k=10)", run_spatial_knn),
    "tuned_blend": ("Tuned spatial/expression kNN blend", run_tuned_blend),
    "scvi": ("scVI", run_scvi),
    "spagat": ("SpaGAT", run_spagat),
    "spaformer": ("SpaFormer", run_spaformer),
    "spatial_knn_xy": ("Spatial kNN (k=10), x, y only", run_spatial_knn_xy),
    "tuned_blend_xy": ("Tuned kNN blend, x, y only", run_tuned_blend_xy),
    "spaformer_xy": ("SpaFormer, x, y only", run_spaformer_xy),
}

#: methods that drop z: run on 3-D datasets only
XY_METHODS = {"spatial_knn_xy", "tuned_blend_xy", "spaformer_xy"}

#: ablation group -> [(setting label, SpaFormer keyword arguments)]
ABLATIONS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "positional encoding": [
        (pe, {"pos_encoding": pe})
        for pe in [
            "none",
            "learnable",
            "sinusoid",
            "sinusoid_coord",
            "naive",
            "rwpe",
            "lappe",
            "signnet",
            "cond",
        ]
    ],
    "mask rates (cell / gene)": [
        (f"{c} / {g}", {"cell_mask_rate": c, "gene_mask_rate": g})
        for c, g in [(0.5, 0.5), (0.25, 0.5), (0.75, 0.5), (0.5, 0.25), (0.5, 0.75)]
    ],
    "decoder / latent": [
        (f"{lik.upper()} / {'VAE' if var else 'AE'}", {"likelihood": lik, "variational": var})
        for lik, var in [("mse", False), ("zinb", False), ("mse", True)]
    ],
}


def spaformer_defaults() -> dict[str, Any]:
    """Default keyword arguments of :class:`scfound.SpaFormer`."""
    signature = inspect.signature(sf.SpaFormer.__init__)
    return {
        name: p.default
        for name, p in signature.parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def non_default(model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments that differ from SpaFormer's defaults (identifies a config)."""
    defaults = spaformer_defaults()
    return {k: v for k, v in sorted(model_kwargs.items()) if defaults.get(k, object()) != v}


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------


def score(task: Task, imputed: np.ndarray) -> dict[str, float]:
    """Held-out RMSE, Pearson and cosine against the true counts."""
    return imputation_scores(task.adata.layers["counts"], imputed, task.adata.layers["heldout"])


def timed(fn: Callable[[Task], Result], task: Task) -> tuple[np.ndarray, dict[str, Any], float]:
    start = time.perf_counter()
    imputed, params = fn(task)
    return imputed, params, time.perf_counter() - start


def make_task(args: argparse.Namespace, dataset: str, seed: int) -> Task:
    loader, group_key = DATASETS[dataset]
    adata = loader()
    sf.pp.mask_entries(adata, HELDOUT_FRACTION, layer="counts", seed=seed)
    return Task(adata, dataset, seed, group_key, args.max_epochs, args.scvi_max_epochs)


def fmt(value: float) -> str:
    return "nan" if not np.isfinite(value) else f"{value:.4f}"


def run_benchmark(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """Run every dataset x seed x method (and the ablations); write results as they come."""
    rows: list[dict[str, Any]] = []
    ablation_rows: list[dict[str, Any]] = []
    for dataset in args.datasets:
        for seed in args.seeds:
            task = make_task(args, dataset, seed)
            # SpaFormer runs keyed by their non-default settings, reused by the ablations.
            spaformer_runs: dict[str, tuple[dict[str, float], float]] = {}
            for method in args.methods:
                if method in XY_METHODS and task.coords.shape[1] != 3:
                    continue
                name, fn = METHODS[method]
                imputed, params, seconds = timed(fn, task)
                scores = score(task, imputed)
                if method == "spaformer":
                    spaformer_runs[json.dumps({})] = (scores, seconds)
                rows.append(
                    {
                        "dataset": dataset,
                        "seed": seed,
                        "method": method,
                        **scores,
                        "seconds": seconds,
                        "params": json.dumps(params, default=str),
                    }
                )
                print(
                    f"[{dataset} seed={seed}] {name:<36} RMSE {fmt(scores['rmse'])}  "
                    f"Pearson {fmt(scores['pearson'])}  cosine {fmt(scores['cosine'])}  "
                    f"{seconds:8.1f} s  {json.dumps(params, default=str) if params else ''}",
                    flush=True,
                )
                write_outputs(args, rows, ablation_rows)
            if args.ablations and dataset in ABLATION_DATASETS:
                groups = ABLATION_DATASETS[dataset] or list(ABLATIONS)
                for group, settings in ABLATIONS.items():
                    if group not in groups:
                        continue
                    for label, kwargs in settings:
                        key = json.dumps(non_default(kwargs))
                        reused = key in spaformer_runs
                        if not reused:
                            start = time.perf_counter()
                            imputed, _ = spaformer_impute(task, kwargs, "spaformer_ablation")
                            seconds = time.perf_counter() - start
                            spaformer_runs[key] = (score(task, imputed), seconds)
                        scores, seconds = spaformer_runs[key]
                        is_default = key == json.dumps({})
                        ablation_rows.append(
                            {
                                "dataset": dataset,
                                "seed": seed,
                                "ablation": group,
                                "setting": label + (" (default)" if is_default else ""),
                                **scores,
                                "seconds": seconds,
                                "model_kwargs": json.dumps(kwargs),
                                "reused_run": reused,
                            }
                        )
                        print(
                            f"[{dataset} seed={seed}] ablation {group}: {label:<16} "
                            f"RMSE {fmt(scores['rmse'])}  Pearson {fmt(scores['pearson'])}  "
                            f"cosine {fmt(scores['cosine'])}  {seconds:8.1f} s"
                            + ("  (reused)" if reused else ""),
                            flush=True,
                        )
                        write_outputs(args, rows, ablation_rows)
    return rows, ablation_rows


# --------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def mean_sd(values: pd.Series, digits: int = 4) -> str:
    values = values.astype(float)
    if values.isna().all():
        return "-"
    mean = values.mean()
    if len(values) > 1:
        return f"{mean:.{digits}f} ± {values.std(ddof=1):.{digits}f}"
    return f"{mean:.{digits}f}"


def results_tables(results: pd.DataFrame) -> list[str]:
    """One markdown section per dataset: methods x metrics, averaged over seeds."""
    sections = []
    if results.empty:
        return sections
    for dataset, df in results.groupby("dataset", sort=False):
        body = []
        for method in [m for m in METHODS if m in set(df["method"])]:
            sub = df[df["method"] == method]
            body.append(
                [
                    METHODS[method][0],
                    mean_sd(sub["rmse"]),
                    mean_sd(sub["pearson"]),
                    mean_sd(sub["cosine"]),
                    mean_sd(sub["seconds"], 1),
                ]
            )
        seeds = sorted(df["seed"].unique())
        text = [
            f"### {DATASET_TITLES.get(dataset, dataset)}",
            "",
            f"Seeds: {', '.join(map(str, seeds))}"
            + (" (mean ± sd over seeds)" if len(seeds) > 1 else ""),
            "",
            markdown_table(["method", "RMSE ↓", "Pearson ↑", "cosine ↑", "seconds"], body),
        ]
        blend = df[df["method"] == "tuned_blend"]
        if len(blend):
            text += ["", "Tuned blend, parameters chosen on the validation mask:", ""]
            for _, row in blend.iterrows():
                p = json.loads(row["params"])
                text.append(
                    f"- seed {row['seed']}: w = {p['w']} (spatial weight), spatial k = "
                    f"{p['spatial_k']} ({p['spatial_weighting']}), expression k = "
                    f"{p['expression_k']} ({p['expression_weighting']}); validation Pearson "
                    f"{p['val_pearson']:.4f}; {p['n_candidates']} settings searched in "
                    f"{p['search_seconds']:.1f} s"
                )
        sections.append("\n".join(text))
    return sections


def ablation_table(ablations: pd.DataFrame) -> str:
    if ablations.empty:
        return ""
    body = []
    for (group, setting), df in ablations.groupby(["ablation", "setting"], sort=False):
        body.append(
            [
                group,
                setting,
                mean_sd(df["rmse"]),
                mean_sd(df["pearson"]),
                mean_sd(df["cosine"]),
                mean_sd(df["seconds"], 1),
            ]
        )
    datasets = ", ".join(ablations["dataset"].unique())
    seeds = ", ".join(map(str, sorted(ablations["seed"].unique())))
    return "\n".join(
        [
            f"### SpaFormer ablations ({datasets}; seeds {seeds})",
            "",
            "SpaFormer with its defaults except the setting named; the same held-out mask as "
            "above. The default configuration is trained once and its row repeated in each "
            "group.",
            "",
            markdown_table(
                ["ablation", "setting", "RMSE ↓", "Pearson ↑", "cosine ↑", "seconds"], body
            ),
        ]
    )


def environment() -> str:
    import scvi
    import torch

    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, scvi-tools "
        f"{scvi.__version__}, scfound {getattr(sf, '__version__', 'unknown')}; "
        f"{os.cpu_count()} CPU cores visible, {torch.get_num_threads()} torch threads, "
        f"CUDA {'available' if torch.cuda.is_available() else 'not available'} "
        f"({platform.platform()})."
    )


PROTOCOL = (
    "**Protocol.** 30 % of all cell x gene entries, zeros included, are held out at random "
    "(`scfound.pp.mask_entries(fraction=0.3)`); a cell with counts never loses all of them. "
    "Every method, baselines included, sees only the observed matrix (held-out entries are "
    "zeros it cannot tell apart from true zeros), plus the coordinates or FOVs where it uses "
    "them. The tuned kNN blend chooses its parameters on a validation mask of 10 % drawn from "
    "the observed matrix only, then refits on the whole observed matrix; the test mask is never "
    "used for tuning. Metrics (`scfound.metrics.imputation_scores`): the true counts and each "
    "imputation (count scale) are normalised per cell by their own totals to the median "
    "library size of the true counts and log1p-transformed; RMSE, Pearson and cosine are then "
    "computed on all held-out entries pooled into one vector. Zero fill predicts 0 on every "
    "held-out entry, so its Pearson and cosine are undefined. Seconds are the wall time of "
    "training and inference of each method (for the blend: search and refit)."
)


def write_outputs(
    args: argparse.Namespace, rows: list[dict[str, Any]], ablation_rows: list[dict[str, Any]]
) -> str:
    """Write the CSV files and the markdown report; return the markdown."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = pd.DataFrame(rows)
    ablations = pd.DataFrame(ablation_rows)
    results.to_csv(out / "spatial_imputation.csv", index=False)
    if len(ablations):
        ablations.to_csv(out / "spatial_imputation_ablations.csv", index=False)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    parts = [
        "# Spatial imputation benchmark (masked entries)",
        "",
        f"Command: `{command}`  ",
        f"Date: {args.started}  ",
        f"Environment: {environment()}  ",
        f"Settings: SpaFormer/SpaGAT max_epochs = {args.max_epochs}, scVI max_epochs = "
        f"{args.scvi_max_epochs}; methods: {', '.join(args.methods)}.",
        "",
        PROTOCOL,
        "",
        *[section + "\n" for section in results_tables(results)],
    ]
    table = (
        "\n\n".join(ablation_table(df) for _, df in ablations.groupby("dataset", sort=False))
        if len(ablations)
        else ""
    )
    if table:
        parts += [table, ""]
    text = "\n".join(parts)
    (out / "spatial_imputation.md").write_text(text)
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument(
        "--max-epochs", type=int, default=200, help="SpaFormer and SpaGAT training epochs"
    )
    parser.add_argument("--scvi-max-epochs", type=int, default=400, help="scVI training epochs")
    parser.add_argument(
        "--ablations",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="SpaFormer ablations on osmFISH",
    )
    parser.add_argument(
        "--scaling",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also run benchmarks/scaling.py (its own outputs)",
    )
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: CosMx only, 2 epochs for SpaFormer/SpaGAT/scVI, no ablations",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.datasets = ["cosmx"]
        args.max_epochs = 2
        args.scvi_max_epochs = 2
        args.ablations = False
    args.started = datetime.now().astimezone().isoformat(timespec="seconds")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, write the tables and print them."""
    args = parse_args(argv)
    rows, ablation_rows = run_benchmark(args)
    print()
    print(write_outputs(args, rows, ablation_rows))
    if args.scaling:
        script = Path(__file__).with_name("scaling.py")
        subprocess.run([sys.executable, str(script), "--out", args.out], check=True)


if __name__ == "__main__":
    main()
