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

#: proteins of the synthetic CITE-seq data of ``--model scmognn``
SCMOGNN_PROTEINS = 100
#: training steps timed per size for ``--model scmognn`` (the epoch is extrapolated from them)
SCMOGNN_STEPS = 21
#: report titles of the models whose title is not stAI's
TITLES = {"spaformer": "SpaFormer", "scmognn": "ScMoGNN"}


def run_one(n_cells: int, n_genes: int, epochs: int, model_name: str, n_reference: int) -> dict:
    """Generate, set up and train on one synthetic section; report times and peak memory."""
    import torch
    from lightning.pytorch.callbacks import Callback

    import scfound as sf

    class EpochTimer(Callback):
        def __init__(self):
            self.times: list[float] = []
            self.cpu_times: list[float] = []
            self.step_cpu: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._step = time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.step_cpu.append(time.process_time() - self._step)

        def on_train_epoch_start(self, trainer, pl_module):
            self._start = time.perf_counter()
            self._cpu = time.process_time()

        def on_train_epoch_end(self, trainer, pl_module):
            self.times.append(time.perf_counter() - self._start)
            self.cpu_times.append(time.process_time() - self._cpu)

    t0 = time.perf_counter()
    timer = EpochTimer()
    cpu: dict[str, float] = {}  # process CPU times, where a model reports them
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
    elif model_name == "scmognn":
        mdata = sf.datasets.synthetic_multiome(n_cells, n_genes, SCMOGNN_PROTEINS, seed=0)
        t_data = time.perf_counter() - t0
        sf.ScMoGNN.setup_mudata(
            mdata,
            rna_layer="counts",
            protein_layer="counts",
            modalities={"rna_layer": "rna", "protein_layer": "adt"},
        )
        model = sf.ScMoGNN(mdata)
        n_steps = -(-round(0.85 * n_cells) // 512)
        model.train(
            max_epochs=epochs,
            early_stopping=False,
            callbacks=[timer],
            limit_train_batches=min(SCMOGNN_STEPS, n_steps),
            limit_val_batches=2,
        )
        t1, cpu1 = time.perf_counter(), time.process_time()
        model.predict(mdata.mod["rna"], layer="counts")
        steps = timer.step_cpu[1:]  # the first step pays one-off costs
        cpu = {
            "steps_timed": len(steps),
            "epoch_cpu_s": round(float(sum(steps) / len(steps) * n_steps), 2),
            "inference_cpu_s": round(time.process_time() - cpu1, 2),
        }
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
        **cpu,
    }


#: features of ``--model sailer`` (peaks + background bins, half each) and its training settings
SAILER_PEAKS = 25_000
SAILER_BATCH = 128
#: mean fragments per simulated cell of ``--model sailer`` (about 600 non-zero features per cell)
SAILER_MU = 600.0


def write_backed_atac(
    path: Path, n_cells: int, n_peaks: int, *, chunk: int = 10_000, seed: int = 0
) -> None:
    """Write simulated scATAC-seq counts to an h5ad file ``chunk`` cells at a time.

    Each chunk comes from :func:`scfound.datasets.simulate_atac` with the bulk profiles of the
    first chunk (8 equally frequent types, ``n_peaks / 2`` peaks and as many background bins) and
    is appended to the CSR matrix on disk, so that the generator never holds more than one chunk.
    """
    import anndata as ad
    import h5py
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    import scfound as sf

    n_signal, n_types = n_peaks // 2, 8
    obs, bulk, var, disk = [], None, None, None
    with h5py.File(path, "w") as f:
        for i, start in enumerate(range(0, n_cells, chunk)):
            n = min(chunk, n_cells - start)
            part = sf.datasets.simulate_atac(
                bulk,
                n_cells=n,
                n_peaks=n_signal,
                n_background=n_peaks - n_signal,
                fractions=[1 / n_types] * n_types,
                mu=SAILER_MU,
                seed=seed + i,
            )
            if bulk is None:
                var = part.var[[]]
                bulk = pd.DataFrame(
                    np.asarray(part.varm["bulk"])[:n_signal].T, columns=part.var_names[:n_signal]
                )
            X = sp.csr_matrix(part.X, dtype=np.float32)
            if disk is None:
                ad.io.write_elem(f, "X", X)
                disk = ad.io.sparse_dataset(f["X"])
            else:
                disk.append(X)
            frame = part.obs[["cell_type", "n_fragments"]].copy()
            frame.index = [f"cell_{start + j}" for j in range(n)]
            obs.append(frame)
        frame = pd.concat(obs)
        frame["cell_type"] = frame["cell_type"].astype("category")
        ad.io.write_elem(f, "obs", frame)
        ad.io.write_elem(f, "var", var)


def run_sailer(n_cells: int, n_peaks: int, steps: int) -> dict:
    """Time ``steps`` SAILER training steps streamed from a backed h5ad of ``n_cells`` cells.

    The file is written to a temporary folder chunk-wise (:func:`write_backed_atac`) and opened
    with ``backed="r"``; the matrix stays on disk. A step's time is the wall time between the
    starts of consecutive steps (reading the mini-batch from disk included), the first 3 steps
    excluded; the epoch time is the median step time times the steps of one epoch. Inference
    (posterior means) is timed on the first 5,000 cells.
    """
    import math
    import tempfile

    import anndata as ad
    import numpy as np
    import torch
    from lightning.pytorch.callbacks import Callback

    import scfound as sf

    class StepTimer(Callback):
        def __init__(self):
            self.starts: list[float] = []
            self.ends: list[float] = []
            self.cpu: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.starts.append(time.perf_counter())
            self.cpu.append(time.process_time())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "atac.h5ad"
        t0 = time.perf_counter()
        write_backed_atac(path, n_cells, n_peaks)
        t_data = time.perf_counter() - t0
        adata = ad.read_h5ad(path, backed="r")
        t0 = time.perf_counter()
        sf.SAILER.setup_anndata(adata)
        model = sf.SAILER(adata)
        t_setup = time.perf_counter() - t0
        timer = StepTimer()
        model.train(
            max_epochs=1,
            batch_size=SAILER_BATCH,
            train_size=1.0,
            limit_train_batches=steps + 4,
            enable_progress_bar=False,
            callbacks=[timer],
        )
        starts, ends = np.asarray(timer.starts), np.asarray(timer.ends)
        step = float(np.median(np.diff(starts)[3:]))
        read = float(np.median(starts[4:] - ends[3:-1]))
        cpu = float(np.median(np.diff(timer.cpu)[3:]))
        t0 = time.perf_counter()
        n_infer = min(n_cells, 5000)
        model.get_latent_representation(indices=np.arange(n_infer), batch_size=512)
        t_infer = time.perf_counter() - t0
        still_backed = adata.isbacked and type(adata.X).__name__ == "_CSRDataset"
        file_gb = path.stat().st_size / 2**30
    steps_per_epoch = math.ceil(n_cells / SAILER_BATCH)
    return {
        "n_cells": n_cells,
        "n_peaks": n_peaks,
        "steps_timed": int(len(starts) - 4),
        "step_s": round(step, 3),
        "read_s": round(read, 4),
        "cpu_step_s": round(cpu, 3),
        "cpu_epoch_s": round(cpu * steps_per_epoch, 1),
        "epoch_s": round(step * steps_per_epoch, 1),
        "data_s": round(t_data, 1),
        "setup_s": round(t_setup, 1),
        "inference_us_per_cell": round(t_infer / n_infer * 1e6, 1),
        "file_gb": round(file_gb, 3),
        "dense_gb": round(n_cells * n_peaks * 4 / 2**30, 2),
        "still_backed": bool(still_backed),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "torch_threads": torch.get_num_threads(),
    }


def sailer_report(rows: list[dict], command: str) -> str:
    """Markdown report of :func:`run_sailer` rows."""
    import scvi
    import torch

    lines = [
        "# SAILER scaling: training streamed from a backed h5ad (CPU)",
        "",
        f"Command: `{command}`  ",
        f"Date: {date.today()}; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads (2 cores shared with other jobs); torch "
        f"{torch.__version__}, scvi-tools {scvi.__version__}.",
        "",
        f"Default SAILER (1000-100 hidden, 10-d latent, mini-batches of {SAILER_BATCH}) on "
        f"simulated counts ({SAILER_PEAKS:,} features by default: half peaks of 8 types, half "
        f"background; about {SAILER_MU:.0f} fragments per cell), written chunk-wise to an h5ad "
        "file in a temporary folder and opened with `anndata.read_h5ad(path, backed='r')`; "
        "scvi-tools' data loader reads each mini-batch's rows from disk. **The epoch time is "
        "extrapolated**: a fixed number of steps is timed (the first 3 excluded), and the "
        "median step time is multiplied by the steps of one epoch (cells / 128); `read (s)` is "
        "the part of a step spent between steps (reading the rows). `setup (s)` covers "
        "`setup_anndata` and the model's data statistics (passes over the file in blocks of "
        "10,000 rows). `peak RSS` is the peak resident memory of the whole process (data "
        "generation, a chunk of 10,000 cells at a time, included); `dense` is what the matrix "
        "would take in memory as float32. Inference: posterior means of the first 5,000 cells. "
        "The machine's 2 cores were shared with other jobs, so wall times carry their load; "
        "`CPU s per step` (process time of one step) is the load-free measure.",
        "",
        "| cells | features | steps timed | s per step | read (s) | epoch (s, extrapolated) "
        "| µs per cell-epoch | CPU s per step | CPU epoch (s, extrapolated) | setup (s) "
        "| inference (µs/cell) | file (GB) | dense (GB) | peak RSS (GB) | X still on disk |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n_cells']:,} | {r['n_peaks']:,} | {r['steps_timed']} | {r['step_s']} | "
            f"{r['read_s']} | {r['epoch_s']} | {r['us_per_cell_epoch']} | {r['cpu_step_s']} | "
            f"{r['cpu_epoch_s']} | {r['setup_s']} | "
            f"{r['inference_us_per_cell']} | {r['file_gb']} | {r['dense_gb']} | "
            f"{r['peak_rss_gb']} | {r['still_backed']} |"
        )
    return "\n".join(lines) + "\n"


def main_sailer(args: argparse.Namespace) -> None:
    """``--model sailer``: every size in its own process; writes ``scaling_sailer.{json,md}``."""
    if args.one:
        print(json.dumps(run_sailer(args.one, args.peaks, args.steps)))
        return
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--model", "sailer", "--one", str(n)]
        cmd += ["--peaks", str(args.peaks), "--steps", str(args.steps)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row["us_per_cell_epoch"] = round(row["epoch_s"] / n * 1e6, 1)
        rows.append(row)
        print(row, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = (
        f"OMP_NUM_THREADS=1 python benchmarks/scaling.py --model sailer --sizes "
        f"{' '.join(map(str, args.sizes))} --peaks {args.peaks} --steps {args.steps} "
        f"--out {args.out}"
    )
    (out / "scaling_sailer.json").write_text(
        json.dumps({"command": command, "rows": rows}, indent=1)
    )
    (out / "scaling_sailer.md").write_text(sailer_report(rows, command))


def main() -> None:
    """Run every size in a subprocess and write ``benchmarks/results/scaling.{json,md}``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000, 200_000])
    parser.add_argument("--genes", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--model", choices=["spaformer", "stai", "scmognn", "sailer"], default="spaformer"
    )
    parser.add_argument("--reference-cells", type=int, default=20_000, help="stAI reference")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=20, help="sailer: training steps timed")
    parser.add_argument("--peaks", type=int, default=SAILER_PEAKS, help="sailer: features")
    args = parser.parse_args()
    if args.model == "sailer":
        main_sailer(args)
        return
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
        "scmognn": "Default ScMoGNN (GEX -> ADT, 64 hidden, 4 layers, co-expression gene graph, "
        f"50 SVD cell features) on `sf.datasets.synthetic_multiome` ({SCMOGNN_PROTEINS} "
        "proteins); mini-batches of 512 training cells (85 % of the cells) with all their "
        "edges, one sampled subgraph per step (`tiles` = steps); the epoch time includes the "
        "validation pass over the other 15 %; inference predicts every cell. Only the first "
        f"{SCMOGNN_STEPS} training steps (and 2 validation steps) run: `epoch (s)` is their wall "
        "time, not an epoch's; `epoch CPU (s)` is the mean process CPU time "
        "(`time.process_time`, one thread) of steps 2 to "
        f"{SCMOGNN_STEPS} times the steps of a full epoch (`tiles`), an extrapolation; CPU time "
        "is not inflated by other jobs on the machine as wall time is.",
    }[args.model]
    cpu_columns = all("epoch_cpu_s" in r for r in rows)
    lines = [
        f"# {TITLES.get(args.model, 'stAI')} scaling on synthetic "
        f"{'paired RNA + protein data' if args.model == 'scmognn' else 'sections'} (CPU)",
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
        "| cells | genes | tiles | epoch (s) | µs per cell-epoch | inference (s) | peak RSS (GB) |"
        + (" epoch CPU (s) | µs CPU per cell-epoch | inference CPU (s) |" if cpu_columns else ""),
        "|---|---|---|---|---|---|---|" + ("---|---|---|" if cpu_columns else ""),
    ]
    for r in rows:
        lines.append(
            f"| {r['n_cells']:,} | {r['n_genes']} | {r['n_tiles']} | {r['epoch_s']} | "
            f"{r['us_per_cell_epoch']} | {r['inference_s']} | {r['peak_rss_gb']} |"
            + (
                f" {r['epoch_cpu_s']} | {r['epoch_cpu_s'] / r['n_cells'] * 1e6:.1f} | "
                f"{r['inference_cpu_s']} |"
                if cpu_columns
                else ""
            )
        )
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
