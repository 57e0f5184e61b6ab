"""One timed zero-shot embedding run, in its own process so that peak memory is its own.

Usage: ``python benchmarks/_cellplm_embed.py {theirs,ours,ours-deterministic,scvi} PREFIX OUT.npy
[--repeat R] [--cells N]``. Prints one JSON line with wall times and peak RSS (``ru_maxrss``).
Needs the authors' package for ``theirs``: ``pip install --no-deps cellplm==0.1.0.post2 einops``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")

MOP = "../shared/data/mop_snareseq.h5mu"


def load_cells(n_cells: int | None):
    """MoP RNA counts as CSR (repeated to reach ``n_cells`` when asked), one sample."""
    import anndata as ad
    import mudata
    import scipy.sparse as sp

    rna = mudata.read_h5mu(MOP)["rna"]
    X = sp.csr_matrix(rna.layers["counts"], dtype=np.float32)
    if n_cells is not None:
        reps = int(np.ceil(n_cells / X.shape[0]))
        X = sp.vstack([X] * reps, format="csr")[:n_cells]
    return ad.AnnData(X, var=rna.var[[]].copy())


def main() -> None:
    """Run one implementation and print its timings."""
    parser = argparse.ArgumentParser()
    parser.add_argument("impl", choices=["theirs", "ours", "ours-deterministic", "scvi"])
    parser.add_argument("prefix")
    parser.add_argument("out")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--cells", type=int, default=None)
    args = parser.parse_args()

    import torch

    adata = load_cells(args.cells)
    times = []
    if args.impl == "theirs":
        import os

        from CellPLM.pipeline.cell_embedding import CellEmbeddingPipeline

        pipe = CellEmbeddingPipeline(
            pretrain_prefix=os.path.basename(args.prefix),
            pretrain_directory=os.path.dirname(args.prefix),
        )
        run = lambda: pipe.predict(adata).numpy()  # noqa: E731
    elif args.impl.startswith("ours"):
        import scfound as sf

        sf.CellPLM.setup_anndata(adata)
        model = sf.CellPLM.load_pretrained(
            args.prefix, adata, stochastic_embedding=args.impl == "ours"
        )
        run = model.get_latent_representation
    else:
        import scvi

        scvi.settings.seed = 0
        scvi.model.SCVI.setup_anndata(adata)
        model = scvi.model.SCVI(adata, n_latent=30)
        model.train(max_epochs=1, enable_progress_bar=False)
        run = model.get_latent_representation
    for _ in range(args.repeat):
        torch.manual_seed(0)
        start = time.perf_counter()
        emb = run()
        times.append(time.perf_counter() - start)
    np.save(args.out, np.asarray(emb, dtype=np.float32))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(
        json.dumps(
            {
                "impl": args.impl,
                "n_cells": adata.n_obs,
                "times_s": times,
                "best_s": min(times),
                "peak_rss_gb": peak_gb,
            }
        )
    )


if __name__ == "__main__":
    main()
