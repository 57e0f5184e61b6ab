"""Scaling of SpaFormer and stAI: time per epoch and peak memory on synthetic sections (CPU).

Each size runs in its own process so that its peak resident memory (``ru_maxrss``) is its own.
SpaFormer: sections are cut into tiles of about 1,000 cells (``scfound.pp.spatial_tiles``), one
tile per training step. stAI: the spatial section (``--genes`` genes) is paired with a reference
of ``--reference-cells`` cells that also measures 100 genes the section lacks; a step is one
spatial block of at most 2,048 cells plus 2,048 reference cells, and the imputation of the 100
genes is timed as inference. Either way the work per epoch grows linearly with the cells.

Usage::

    python benchmarks/scaling.py --sizes 10000 50000 100000 200000 --genes 1000
    python benchmarks/scaling.py --model stai --sizes 10000 100000 --genes 200 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path


def run_one(n_cells: int, n_genes: int, epochs: int, model_name: str, n_reference: int) -> dict:
    """Generate, set up and train on one synthetic section; report times and peak memory."""
    import torch
    from lightning.pytorch.callbacks import Callback

    import scfound as sf

    class EpochTimer(Callback):
        def __init__(self):
            self.times: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.times.append(time.perf_counter() - self._start)

    t0 = time.perf_counter()
    timer = EpochTimer()
    if model_name == "stai":
        both = sf.datasets.synthetic_spatial(n_cells + n_reference, n_genes + 100, 8, seed=0)
        adata = both[:n_cells, :n_genes].copy()
        reference = both[n_cells:].copy()
        del reference.obsm["spatial"]
        del both
        t_data = time.perf_counter() - t0
        sf.STAI.setup_anndata(adata, layer="counts", spatial_key="spatial")
        sf.STAI.setup_anndata(reference, layer="counts", labels_key="cell_type")
        model = sf.STAI(adata, reference)
        model.train(max_epochs=epochs, callbacks=[timer])
        t1 = time.perf_counter()
        model.get_imputed_expression(scale="log1p")
        n_steps = len(sf.data.spatial_blocks(model._coords, model._samples, 2048))
    else:
        adata = sf.datasets.synthetic_spatial(n_cells, n_genes, 8, seed=0)
        sf.pp.spatial_tiles(adata, n_tiles=max(round(n_cells / 1000), 1))
        t_data = time.perf_counter() - t0
        sf.SpaFormer.setup_anndata(adata, layer="counts", group_key="spatial_tile")
        model = sf.SpaFormer(adata)
        model.train(max_epochs=epochs, callbacks=[timer])
        t1 = time.perf_counter()
        model.get_imputed_expression()
        n_steps = int(adata.obs["spatial_tile"].nunique())
    t_infer = time.perf_counter() - t1
    return {
        "n_cells": n_cells,
        "n_genes": n_genes,
        "n_tiles": n_steps,
        "data_s": round(t_data, 2),
        "epoch_s": round(min(timer.times), 2),
        "inference_s": round(t_infer, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    """Run every size in a subprocess and write ``benchmarks/results/scaling.{json,md}``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000, 200_000])
    parser.add_argument("--genes", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--model", choices=["spaformer", "stai"], default="spaformer")
    parser.add_argument("--reference-cells", type=int, default=20_000, help="stAI reference")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(
            json.dumps(run_one(args.one, args.genes, args.epochs, args.model, args.reference_cells))
        )
        return
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--genes", str(args.genes)]
        cmd += ["--epochs", str(args.epochs), "--model", args.model]
        cmd += ["--reference-cells", str(args.reference_cells)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row["us_per_cell_epoch"] = round(row["epoch_s"] / n * 1e6, 1)
        rows.append(row)
        print(row, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "scaling" if args.model == "spaformer" else f"scaling_{args.model}"
    (out / f"{name}.json").write_text(json.dumps(rows, indent=1))
    import scvi
    import torch

    what = {
        "spaformer": "Default SpaFormer (2 layers, 8 heads, 128 hidden, Cond PE); tiles of ~1,000 "
        "cells, one tile per step.",
        "stai": f"Default STAI (5 gene folds, 64/16 widths, top-50); a reference of "
        f"{args.reference_cells:,} cells with 100 more genes, all imputed at inference; blocks of "
        "at most 2,048 spatial cells plus 2,048 reference cells per step (`tiles` = steps).",
    }[args.model]
    lines = [
        f"# {'SpaFormer' if args.model == 'spaformer' else 'stAI'} scaling on synthetic "
        "sections (CPU)",
        "",
        f"Command: `python benchmarks/scaling.py --model {args.model} --sizes "
        f"{' '.join(map(str, args.sizes))} --genes {args.genes} --epochs {args.epochs}"
        + (f" --reference-cells {args.reference_cells}" if args.model == "stai" else "")
        + "`  ",
        f"Date: {date.today()}; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads; torch {torch.__version__}, "
        f"scvi-tools {scvi.__version__}.",
        "",
        f"{what} `epoch_s` is the fastest of the epochs; `peak_rss_gb` is the peak "
        "resident memory of the whole process (data generation included).",
        "",
        "| cells | genes | tiles | epoch (s) | µs per cell-epoch | inference (s) | peak RSS (GB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n_cells']:,} | {r['n_genes']} | {r['n_tiles']} | {r['epoch_s']} | "
            f"{r['us_per_cell_epoch']} | {r['inference_s']} | {r['peak_rss_gb']} |"
        )
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
