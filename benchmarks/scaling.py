"""SpaFormer scaling: time per epoch and peak memory on synthetic sections (CPU).

Each size runs in its own process so that its peak resident memory (``ru_maxrss``) is its own.
Sections are cut into tiles of about 1,000 cells (``scfound.pp.spatial_tiles``), one tile per
training step, so the work per epoch grows linearly with the number of cells.

Usage::

    python benchmarks/scaling.py --sizes 10000 50000 100000 200000 --genes 1000
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


def run_one(n_cells: int, n_genes: int, epochs: int) -> dict:
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
    adata = sf.datasets.synthetic_spatial(n_cells, n_genes, 8, seed=0)
    sf.pp.spatial_tiles(adata, n_tiles=max(round(n_cells / 1000), 1))
    t_data = time.perf_counter() - t0
    sf.SpaFormer.setup_anndata(adata, layer="counts", group_key="spatial_tile")
    model = sf.SpaFormer(adata)
    timer = EpochTimer()
    model.train(max_epochs=epochs, callbacks=[timer])
    t1 = time.perf_counter()
    model.get_imputed_expression()
    t_infer = time.perf_counter() - t1
    return {
        "n_cells": n_cells,
        "n_genes": n_genes,
        "n_tiles": int(adata.obs["spatial_tile"].nunique()),
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
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.genes, args.epochs)))
        return
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--genes", str(args.genes)]
        cmd += ["--epochs", str(args.epochs)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row["us_per_cell_epoch"] = round(row["epoch_s"] / n * 1e6, 1)
        rows.append(row)
        print(row, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(rows, indent=1))
    import scvi
    import torch

    lines = [
        "# SpaFormer scaling on synthetic sections (CPU)",
        "",
        f"Command: `python benchmarks/scaling.py --sizes {' '.join(map(str, args.sizes))} "
        f"--genes {args.genes} --epochs {args.epochs}`  ",
        f"Date: {date.today()}; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads; torch {torch.__version__}, "
        f"scvi-tools {scvi.__version__}.",
        "",
        "Default SpaFormer (2 layers, 8 heads, 128 hidden, Cond PE); tiles of ~1,000 cells, one "
        "tile per step. `epoch_s` is the fastest of the epochs; `peak_rss_gb` is the peak "
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
    (out / "scaling.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
