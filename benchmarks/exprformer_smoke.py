"""Smoke run of the ExpressionTransformer on real data (not a quality benchmark).

Trains the ``"small"`` preset on a random subset of PBMC 5k cells for a few epochs and reports
the masked squared error (train and held-out cells) next to a trivial predictor (each masked
gene predicted by the mean of the cell's observed values), and the training throughput with
length-bucketed steps against steps of mixed lengths (each padded to its longest cell). Writes
``benchmarks/results/exprformer_smoke.md``.

    OMP_NUM_THREADS=1 python benchmarks/exprformer_smoke.py --cells 1000 --epochs 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch

import scfound as sf

DATA = Path(__file__).parents[1] / ".." / "shared" / "data" / "pbmc5k_rna.h5ad"
RESULTS = Path(__file__).parent / "results" / "exprformer_smoke.md"


def cell_mean_mse(counts: np.ndarray, mask_rate: float, seed: int) -> float:
    """Masked squared error of predicting each masked value by the cell's observed mean."""
    rng = np.random.default_rng(seed)
    x = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    errors = []
    for row in x:
        values = row[row > 0]
        if len(values) < 2:
            continue
        q = int(min(max(round(mask_rate * len(values)), 1), len(values) - 1))
        perm = rng.permutation(len(values))
        errors.append((values[perm[:q]] - values[perm[q:]].mean()) ** 2)
    return float(np.concatenate(errors).mean())


def train(adata: ad.AnnData, epochs: int, buckets: bool, seed: int) -> tuple:
    """Train a small model; return it and the seconds its training took."""
    torch.manual_seed(seed)
    model = sf.ExpressionTransformer(adata, preset="small", batch_size=64, length_buckets=buckets)
    start = time.perf_counter()
    model.train(max_epochs=epochs, lr=1e-3, train_size=0.9, seed=seed, enable_progress_bar=False)
    seconds = time.perf_counter() - start
    return model, seconds


def main(argv: list[str] | None = None) -> None:
    """Run the smoke test and write its results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    full = ad.read_h5ad(DATA)
    rng = np.random.default_rng(args.seed)
    adata = full[np.sort(rng.choice(full.n_obs, args.cells, replace=False))].copy()
    counts = adata.layers["counts"].toarray()
    adata = adata[(counts > 0).any(1)].copy()
    counts = adata.layers["counts"].toarray()
    lengths = (counts > 0).sum(1)
    sf.ExpressionTransformer.setup_anndata(adata, layer="counts")
    model, seconds = train(adata, args.epochs, True, args.seed)
    tokens = float(np.minimum(lengths, 1100).sum()) * args.epochs
    history = model.history
    train_mse = [round(float(v), 3) for v in history["masked_mse_train"].to_numpy().ravel()]
    valid_mse = [round(float(v), 3) for v in history["masked_mse_validation"].to_numpy().ravel()]
    print("bucketed:", seconds, train_mse, valid_mse, flush=True)
    _, padded_seconds = train(adata, 1, False, args.seed)
    padded_tokens = float(np.minimum(lengths, 1100).sum())
    z = model.get_latent_representation()
    genes = model.get_gene_embeddings()
    lines = [
        "# ExpressionTransformer smoke run (PBMC 5k subset)",
        "",
        f"Command: `OMP_NUM_THREADS=1 python {' '.join(sys.argv)}`",
        "",
        f"- cells: {adata.n_obs} of {full.n_obs} (seed {args.seed}), genes: {adata.n_vars}; "
        f"non-zero genes per cell: median {int(np.median(lengths))}, max {int(lengths.max())}",
        f"- model: {model._model_summary_string}",
        f"- masked MSE per epoch, training cells: {train_mse}",
        f"- masked MSE per epoch, held-out 10 % of cells: {valid_mse}",
        "- trivial predictor (the cell's mean observed log-normalised value), same cells, same "
        f"mask rate: {cell_mean_mse(counts, 0.3, args.seed):.3f}",
        f"- cell embeddings {z.shape}, finite: {bool(np.isfinite(z).all())}; gene embeddings "
        f"{genes.shape}",
        f"- training time, length-bucketed steps: {seconds:.0f} s for {args.epochs} epochs, "
        f"{tokens / seconds:.0f} tokens/s (training and validation tokens, 1 CPU thread on a "
        "shared, loaded machine)",
        f"- training time, steps of mixed lengths (`length_buckets=False`): {padded_seconds:.0f} s "
        f"for 1 epoch, {padded_tokens / padded_seconds:.0f} tokens/s",
        "",
        "A smoke test that training runs and lowers the masked error on real data; not a "
        "benchmark of embedding or imputation quality (issue 24's benchmarks are not run yet).",
    ]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
