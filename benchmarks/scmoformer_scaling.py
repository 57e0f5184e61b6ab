r"""ScMoFormer time per epoch and peak memory against the number of reference cells (CPU).

Synthetic paired data: ``n`` cells x 2,000 genes (sparse Poisson counts, about 10 % non-zero)
and 20 proteins, five cell types. One size per process (peak resident memory is per process).
The model is built (SVD, gene features, co-expression prior graphs, positional encodings; timed)
and trained for ``--steps`` optimizer steps of ``--batch-size`` cells; the time per epoch is the
measured time per step times the steps of one epoch (85 % of the cells train), i.e. an
extrapolation from a fraction of an epoch.

Usage::

    python benchmarks/scmoformer_scaling.py --cells 10000 50000 100000 --steps 5

Appends one line per size to ``scmoformer_scaling.md`` in ``--out`` (default
``benchmarks/results``), with the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from lightning.pytorch.callbacks import Callback
from mudata import MuData

N_GENES, N_PROTEINS = 2000, 20


def synthetic(n_cells: int, seed: int = 0) -> MuData:
    """Paired sparse RNA counts and protein counts driven by five cell types."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 5, n_cells)
    rate = rng.gamma(0.3, 1.0, (5, N_GENES)).astype(np.float32) * 0.4
    rows, cols, vals = [], [], []
    for start in range(0, n_cells, 10_000):
        t = types[start : start + 10_000]
        counts = rng.poisson(rate[t]).astype(np.float32)
        block = sp.csr_matrix(counts)
        coo = block.tocoo()
        rows.append(coo.row + start)
        cols.append(coo.col)
        vals.append(coo.data)
    X = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_cells, N_GENES),
    )
    level = rng.normal(0, 1, (5, N_PROTEINS))
    Y = rng.poisson(10 * np.exp(level[types])).astype(np.float32)
    names = [f"cell{i}" for i in range(n_cells)]
    genes = [f"P{i}" for i in range(N_PROTEINS)] + [f"G{i}" for i in range(N_GENES - N_PROTEINS)]
    rna = AnnData(X, obs=pd.DataFrame(index=names), var=pd.DataFrame(index=genes))
    adt = AnnData(
        Y,
        obs=pd.DataFrame(index=names),
        var=pd.DataFrame(index=[f"P{i}" for i in range(N_PROTEINS)]),
    )
    return MuData({"rna": rna, "adt": adt})


class _StepTimer(Callback):
    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter() - self._start)


def one_size(n_cells: int, steps: int, batch_size: int) -> dict:
    """Build and train on ``n_cells`` cells; timings and peak memory of this process."""
    import scfound as sf

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    mdata = synthetic(n_cells)
    sf.ScMoFormer.setup_mudata(mdata, modalities={"rna_layer": "rna", "protein_layer": "adt"})
    start = time.perf_counter()
    model = sf.ScMoFormer(mdata)
    build = time.perf_counter() - start
    timer = _StepTimer()
    model.train(
        max_epochs=1,
        batch_size=batch_size,
        train_size=1.0,
        early_stopping=False,
        limit_train_batches=steps,
        callbacks=[timer],
        enable_progress_bar=False,
    )
    per_step = float(np.median(timer.times[1:] or timer.times))
    steps_per_epoch = int(np.ceil(0.85 * n_cells / batch_size))  # 15 % validate by default
    return {
        "cells": n_cells,
        "build_s": round(build, 1),
        "s_per_step": round(per_step, 3),
        "steps_per_epoch": steps_per_epoch,
        "s_per_epoch_extrapolated": round(per_step * steps_per_epoch, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one_size(args.one, args.steps, args.batch_size)))
        return
    command = "python benchmarks/scmoformer_scaling.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    rows = []
    for n in args.cells:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                str(n),
                "--steps",
                str(args.steps),
                "--batch-size",
                str(args.batch_size),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows).to_markdown(index=False)
    os.makedirs(args.out, exist_ok=True)
    text = (
        "# ScMoFormer scaling with the number of reference cells (CPU, 1 thread)\n\n"
        f"Command: `{command}`\n\n2,000 genes, 20 proteins, default settings, "
        f"{args.batch_size} cells per step; time per epoch extrapolated from {args.steps} steps "
        "(median step time x steps of one epoch).\n\n" + table + "\n"
    )
    with open(os.path.join(args.out, "scmoformer_scaling.md"), "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
