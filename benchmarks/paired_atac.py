r"""Paired RNA + ATAC benchmark: SAILERX against SAILER and the paired baselines on MoP SNARE-seq.

Data: ``../shared/data/mop_snareseq.h5mu`` (SNARE-seq, mouse primary motor cortex; 10,309 cells,
12 samples, 23 types in ``obs["cell_type"]``; the thesis used this dataset for SAILERX). To keep
CPU time modest the ATAC is restricted to the ``--n-peaks`` peaks accessible in most cells
(every cell is kept).

Methods, all in the same run on the same cells:

* ``sailerx``: :class:`scfound.SAILERX` (50-d, chromosome-wise networks, RNA reference = PCA of
  log1p CP10k RNA, 50 PCs);
* ``sailer``: SAILER with the same architecture and training, i.e. SAILERX with
  ``local_weight=0`` (the thesis' "SAILER" of chapter 3, whose networks were "updated to the same
  structure");
* ``rna_pca``: the RNA reference itself (the 50 PCs SAILERX is given);
* ``atac_lsi``: ``muon.atac.pp.tfidf`` + ``muon.atac.tl.lsi`` (50 components after dropping the
  first);
* ``concat_pca``: RNA PCs and ATAC LSI concatenated, each block divided by its root mean
  square norm so both weigh the same;
* ``multivi``: scvi-tools' ``MULTIVI`` at its defaults (at most 500 epochs with early stopping;
  ``--multivi-epochs``) on the RNA and ATAC counts, its latent means;
* ``wnn``: ``muon.pp.neighbors`` (weighted nearest neighbours) on the 15-neighbour graphs of
  the RNA PCs and of the LSI, clustered on its graph;
* hybrid: RNA removed from a random half of the cells (``hybrid=True``), scored on those
  ATAC-only cells: ``sailerx_hybrid`` against ``sailer`` (same cells, from the run above).

Metrics: Leiden ARI/NMI against the labels with the protocol of ``benchmarks/scatac.py``
(:func:`scfound.metrics.clustering_scores`: 15-neighbour graph on the embedding itself, Leiden
at resolutions 0.1-2.0, ARI/NMI at the best-ARI resolution and ``ARI@k`` at the resolution whose
cluster count is closest to the 23 types); WNN: the same resolutions and choices on its graph.

Usage::

    python benchmarks/paired_atac.py --seeds 0 1

Writes ``paired_atac.md`` and ``paired_atac.json`` into ``--out`` (default
``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import warnings
from datetime import datetime

import anndata
import mudata
import numpy as np
import pandas as pd

import scfound as sf
from _baselines import wnn_graph  # sibling module of this script
from scfound.metrics import clustering_scores, graph_clustering_scores
from scfound.models.sailerx._model import rna_pca

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mop_snareseq.h5mu")


def leiden_scores(Z: np.ndarray, labels: pd.Series, seed: int) -> dict:
    """The protocol of ``benchmarks/scatac.py``: :func:`scfound.metrics.clustering_scores`."""
    out = clustering_scores(
        np.asarray(Z, dtype=np.float32), labels, n_pcs=None, seed=seed, at_n_labels=True
    )
    return {"ARI": out["ari"], "NMI": out["nmi"], "ARI@k": out["ari_at_k"]}


def load(n_peaks: int, n_cells: int = 0) -> mudata.MuData:
    """MoP with the ``n_peaks`` most often accessible peaks (a random ``n_cells``; 0: all)."""
    mdata = mudata.read_h5mu(DATA)
    if n_cells and n_cells < mdata.n_obs:
        keep = np.sort(np.random.default_rng(0).choice(mdata.n_obs, n_cells, replace=False))
        mdata = mudata.MuData({k: v[keep].copy() for k, v in mdata.mod.items()})
    atac = mdata.mod["atac"]
    if n_peaks and n_peaks < atac.n_vars:
        per_peak = np.asarray((atac.layers["counts"] > 0).sum(0)).ravel()
        keep = np.sort(np.argsort(-per_peak, kind="stable")[:n_peaks])
        atac = atac[:, keep].copy()
    out = mudata.MuData({"atac": atac, "rna": mdata.mod["rna"].copy()})
    out.obs["cell_type"] = mdata.mod["rna"].obs["cell_type"].to_numpy()
    out.obs["batch"] = mdata.mod["rna"].obs["batch"].to_numpy()
    return out


def lsi(atac, n_comps: int) -> np.ndarray:
    """TF-IDF + LSI of muon on the counts, first component dropped."""
    import muon as mu

    work = anndata.AnnData(atac.layers["counts"].copy())
    mu.atac.pp.tfidf(work, scale_factor=1e4)
    mu.atac.tl.lsi(work, n_comps=n_comps + 1)
    return np.asarray(work.obsm["X_lsi"][:, 1:])


def wnn_scores(rna_emb: np.ndarray, lsi_emb: np.ndarray, labels: pd.Series, seed: int) -> dict:
    """Leiden on muon's WNN graph, same resolutions and choices as ``leiden_scores``."""
    graph = wnn_graph({"rna": rna_emb, "atac": lsi_emb}, seed)
    out = graph_clustering_scores(graph, labels.to_numpy(), seed=seed, at_n_labels=True)
    return {"ARI": out["ari"], "NMI": out["nmi"], "ARI@k": out["ari_at_k"]}


def fit_sailerx(mdata, args, seed: int, local_weight: float, hybrid: bool = False):
    """A SAILERX (or, with ``local_weight=0``, SAILER) trained on a set-up copy of ``mdata``."""
    work = mudata.MuData({k: v.copy() for k, v in mdata.mod.items()})
    work.obs["batch"] = mdata.obs["batch"].reindex(work.obs_names).to_numpy()
    sf.SAILERX.setup_mudata(
        work,
        atac_layer="counts",
        rna_layer="counts",
        batch_key=args.batch_key,
        hybrid=hybrid,
        modalities={"atac": "atac", "rna": "rna"},
    )
    import torch

    torch.manual_seed(seed)
    model = sf.SAILERX(work, local_weight=local_weight, pos_weight=args.pos_weight)
    model.train(
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        train_size=1.0,
        seed=seed,
        enable_progress_bar=False,
    )
    return model, model.get_latent_representation()


def fit_multivi(mdata, max_epochs: int | None, seed: int) -> np.ndarray:
    """scvi-tools' MULTIVI at its defaults on the paired counts; its latent means."""
    import scvi

    scvi.settings.seed = seed
    work = mudata.MuData({"rna": mdata.mod["rna"].copy(), "atac": mdata.mod["atac"].copy()})
    scvi.model.MULTIVI.setup_mudata(
        work,
        rna_layer="counts",
        atac_layer="counts",
        modalities={"rna_layer": "rna", "atac_layer": "atac"},
    )
    model = scvi.model.MULTIVI(
        work, n_genes=work.mod["rna"].n_vars, n_regions=work.mod["atac"].n_vars
    )
    kwargs = {} if max_epochs is None else {"max_epochs": max_epochs}
    model.train(enable_progress_bar=False, **kwargs)
    return model.get_latent_representation()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--n-peaks", type=int, default=10000)
    parser.add_argument("--n-cells", type=int, default=0, help="random subset of cells (0: all)")
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--local-weight", type=float, default=None)
    parser.add_argument("--pos-weight", type=float, default=1.0)
    parser.add_argument("--batch-key", default=None)
    parser.add_argument("--no-hybrid", action="store_true")
    parser.add_argument("--no-multivi", action="store_true")
    parser.add_argument(
        "--multivi-epochs",
        type=int,
        default=None,
        help="MULTIVI epochs at most (default: its own, 500 with early stopping)",
    )
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--name", default="paired_atac")
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        help="only merge the rows of these result names (e.g. one run per seed) into --name",
    )
    args = parser.parse_args()
    if args.merge:
        merge(args)
        return
    warnings.filterwarnings("ignore")
    sf.settings.progress_bar = False
    import torch

    torch.set_num_threads(1)
    command = "OMP_NUM_THREADS=1 python " + " ".join(shlex.quote(a) for a in sys.argv)
    local_weight = args.local_weight
    if local_weight is None:
        import inspect

        local_weight = inspect.signature(sf.SAILERX).parameters["local_weight"].default
    mdata = load(args.n_peaks, args.n_cells)
    labels = pd.Series(mdata.obs["cell_type"].to_numpy(), index=mdata.obs_names)
    rows = []

    def add(seed, method, Z, seconds, cells="all", mask=None):
        lab = labels if mask is None else labels[mask]
        row = {"seed": seed, "method": method, "cells": cells}
        row |= Z if isinstance(Z, dict) else leiden_scores(Z, lab, seed)
        row["seconds"] = round(seconds, 1)
        rows.append(row)
        print(row, flush=True)

    for seed in args.seeds:
        t0 = time.perf_counter()
        pcs = rna_pca(mdata.mod["rna"].layers["counts"], 50, seed=0)
        t_pca = time.perf_counter() - t0
        t0 = time.perf_counter()
        lsi_emb = lsi(mdata.mod["atac"], 50)
        t_lsi = time.perf_counter() - t0
        add(seed, "rna_pca", pcs, t_pca)
        add(seed, "atac_lsi", lsi_emb, t_lsi)

        def unit(M):
            return M / np.sqrt((M**2).sum(1).mean())

        add(seed, "concat_pca", np.hstack([unit(pcs), unit(lsi_emb)]), t_pca + t_lsi)
        t0 = time.perf_counter()
        wnn = wnn_scores(pcs, lsi_emb, labels, seed)
        add(seed, "wnn", wnn, t_pca + t_lsi + time.perf_counter() - t0)
        t0 = time.perf_counter()
        _, z_sailer = fit_sailerx(mdata, args, seed, 0.0)
        add(seed, "sailer", z_sailer, time.perf_counter() - t0)
        t0 = time.perf_counter()
        _, z = fit_sailerx(mdata, args, seed, local_weight)
        add(seed, "sailerx", z, time.perf_counter() - t0)
        if not args.no_multivi:
            t0 = time.perf_counter()
            z_multivi = fit_multivi(mdata, args.multivi_epochs, seed)
            add(seed, "multivi", z_multivi, time.perf_counter() - t0)
        if args.no_hybrid:
            continue
        rng = np.random.default_rng(seed)
        unpaired = rng.permutation(mdata.n_obs)[: mdata.n_obs // 2]
        mask = np.zeros(mdata.n_obs, bool)
        mask[unpaired] = True
        half = mudata.MuData({"atac": mdata.mod["atac"], "rna": mdata.mod["rna"][~mask].copy()})
        half.obs["batch"] = mdata.obs["batch"].reindex(half.obs_names).to_numpy()
        t0 = time.perf_counter()
        model, z_h = fit_sailerx(half, args, seed, local_weight, hybrid=True)
        seconds = time.perf_counter() - t0
        order = pd.Index(model.adata.obs_names).get_indexer(mdata.obs_names)
        z_h = z_h[order]
        add(seed, "sailerx_hybrid", z_h[mask], seconds, "atac_only", mask)
        add(seed, "sailer", z_sailer[mask], 0.0, "atac_only", mask)
        add(seed, "atac_lsi", lsi_emb[mask], 0.0, "atac_only", mask)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.name}.json"), "w") as fh:
        json.dump({"command": command, "settings": settings(args, local_weight), "rows": rows}, fh)
    write_table(args.out, args.name, [command], settings(args, local_weight), rows)


def settings(args, local_weight: float) -> str:
    return (
        f"{args.n_cells or 10309} cells, {args.n_peaks} most accessible peaks, SAILER/SAILERX "
        f"{args.max_epochs} epochs, batch {args.batch_size}, local_weight {local_weight}, "
        f"pos_weight {args.pos_weight}, batch_key {args.batch_key}."
    )


def merge(args) -> None:
    """Rows of several runs (``--merge seed0 seed1``) in one table."""
    commands, rows, setting = [], [], None
    for name in args.merge:
        with open(os.path.join(args.out, f"{name}.json")) as fh:
            run = json.load(fh)
        commands.append(run["command"])
        rows += run["rows"]
        setting = run["settings"]
    write_table(args.out, args.name, commands, setting, rows)


def write_table(out: str, name: str, commands: list[str], setting: str, rows: list) -> None:
    table = pd.DataFrame(rows)
    mean = table.groupby(["cells", "method"])[["ARI", "NMI", "ARI@k", "seconds"]].mean().round(3)
    with open(os.path.join(out, f"{name}.md"), "w") as fh:
        fh.write("# Paired RNA + ATAC: SAILERX vs SAILER and paired baselines (MoP SNARE-seq)\n\n")
        for command in commands:
            fh.write(f"Command: `{command}`  \n")
        fh.write(f"Date: {datetime.now():%Y-%m-%d %H:%M}, CPU (1 thread, ")
        fh.write("shared machine: seconds are indicative).\n\n")
        fh.write(
            f"{setting} Seeds {sorted(table['seed'].unique().tolist())}. "
            "`cells=atac_only`: the half of the cells whose RNA was removed for the hybrid run.\n\n"
            "## Mean over seeds\n\n"
        )
        fh.write(mean.to_markdown() + "\n\n## Every run\n\n")
        fh.write(table.round(4).to_markdown(index=False) + "\n")
    print(mean)


if __name__ == "__main__":
    main()
