r"""scATAC-seq benchmark: SAILER against LSI and LSI + Harmony on SAILER's simulations.

Data: :func:`scfound.datasets.simulate_atac` with the presets of the SAILER paper (Sim1: deep, one
rare type at 1 %; Sim2: shallow, 9 types; Sim3: two batches differing in depth and signal, one
rare type specific to each batch). The bulk profiles are pseudo-bulk profiles of the MoP
SNARE-seq chromatin types (``../shared/data/mop_snareseq.h5mu``; per type, the fraction of its
cells in which each peak is accessible), restricted to the ``--n-peaks`` peaks that vary most
between the chosen types, plus as many background bins. To keep the density of a peak matrix
of ~100k peaks on a smaller one, the fragment counts of the presets are scaled by
``--depth-scale``.

Methods, all on the same simulated counts in the same run:

* ``sailer``: ``scfound.tl.embed(..., method="sailer")`` (10-d latent; batch as a confounder
  on Sim3);
* ``lsi``: ``muon.atac.pp.tfidf`` + ``muon.atac.tl.lsi`` (11 components, the first, which
  follows depth, dropped: 10 dimensions, as users run it);
* ``lsi_harmony`` (Sim3 only): the LSI components corrected by ``harmonypy`` over batches.

Metrics: Leiden ARI/NMI with the labels, the same protocol for every method and on the
embedding as users cluster it: a 15-neighbour graph on the embedding itself
(``scanpy.pp.neighbors(use_rep=...)``, no PCA in between), Leiden at resolutions 0.1-2.0; ``ARI``
and ``NMI`` at the resolution with the best ARI, ``ARI@k`` at the resolution whose number of
clusters is closest to the number of types (ties: the better ARI), I(z, depth) (mean over
dimensions of the KSG mutual information with the log fragment count,
``sklearn.feature_selection.mutual_info_regression``), and on Sim3 I(z, batch)
(``mutual_info_classif``, mean over dimensions).

Usage::

    python benchmarks/scatac.py --seeds 0 1

Writes ``scatac.md`` and ``scatac.json`` into ``--out`` (default ``benchmarks/results``).
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

import mudata
import numpy as np
import pandas as pd
from sklearn.feature_selection import mutual_info_classif, mutual_info_regression

import scfound as sf

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mop_snareseq.h5mu")
N_LATENT = 10


def mop_profiles(n_types: int, n_peaks: int, rare: int) -> pd.DataFrame:
    """Pseudo-bulk profiles of ``n_types`` MoP types.

    The most abundant types; the last ``rare`` of them are the least abundant types with at
    least 100 cells.
    """
    atac = mudata.read_h5mu(DATA)["atac"]
    counts = atac.obs["cell_type"].value_counts()
    counts = counts[counts >= 100]
    types = list(counts.index[: n_types - rare]) + list(counts.index[-rare:] if rare else [])
    profiles = sf.datasets.pseudobulk_profiles(atac, "cell_type", types=types)
    keep = np.argsort(-profiles.std(0).to_numpy())[:n_peaks]
    return profiles.iloc[:, np.sort(keep)]


def simulate(preset: str, n_cells: int, n_peaks: int, depth_scale: float, seed: int):
    """A preset at ``n_cells`` cells with MoP pseudo-bulk profiles."""
    params = sf.datasets._atac_sim.PRESETS[preset]
    n_types = len(params["fractions"])
    rare = {"sim1": 1, "sim2": 0, "sim3": 2}[preset]
    bulk = mop_profiles(n_types, n_peaks, rare)
    bulk.index = [
        f"{name} ({'rare' if i >= n_types - rare else 'major'})"
        for i, name in enumerate(bulk.index)
    ]
    return sf.datasets.simulate_atac(
        bulk,
        preset=preset,
        n_cells=n_cells,
        mu=[m * depth_scale for m in params["mu"]],
        seed=seed,
    )


def lsi(adata) -> np.ndarray:
    """TF-IDF + LSI of muon, first component dropped."""
    import muon as mu

    work = adata.copy()
    mu.atac.pp.tfidf(work, scale_factor=1e4)
    mu.atac.tl.lsi(work, n_comps=N_LATENT + 1)
    return np.asarray(work.obsm["X_lsi"][:, 1:])


def harmony(Z: np.ndarray, batch: pd.Series, seed: int) -> np.ndarray:
    import harmonypy

    out = harmonypy.run_harmony(
        Z, pd.DataFrame({"batch": batch.to_numpy()}), "batch", random_state=seed, verbose=False
    )
    Zc = np.asarray(out.Z_corr)
    return Zc.T if Zc.shape[0] != Z.shape[0] else Zc


def leiden_scores(Z: np.ndarray, labels: pd.Series, seed: int) -> dict:
    """Leiden on the 15-neighbour graph of ``Z`` at resolutions 0.1-2.0 (see the module doc)."""
    import anndata as ad
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    tmp = ad.AnnData(np.asarray(Z, dtype=np.float64))
    sc.pp.neighbors(tmp, n_neighbors=15, use_rep="X", random_state=seed)
    n_types = labels.nunique()
    runs = []
    for resolution in np.round(np.arange(0.1, 2.01, 0.1), 2):
        sc.tl.leiden(
            tmp,
            resolution=float(resolution),
            flavor="igraph",
            n_iterations=2,
            directed=False,
            random_state=seed,
            key_added="_leiden",
        )
        clusters = tmp.obs["_leiden"].to_numpy()
        runs.append(
            (
                adjusted_rand_score(labels, clusters),
                normalized_mutual_info_score(labels, clusters),
                abs(len(set(clusters)) - n_types),
            )
        )
    best = max(runs, key=lambda r: r[0])
    at_k = min(runs, key=lambda r: (r[2], -r[0]))
    return {"ARI": float(best[0]), "NMI": float(best[1]), "ARI@k": float(at_k[0])}


def scores(Z: np.ndarray, adata, seed: int) -> dict:
    depth = np.log(adata.obs["n_fragments"].to_numpy())
    row = {
        **leiden_scores(Z, adata.obs["cell_type"], seed),
        "I(z,depth)": float(mutual_info_regression(Z, depth, random_state=seed).mean()),
    }
    if adata.obs["batch"].nunique() > 1:
        row["I(z,batch)"] = float(
            mutual_info_classif(Z, adata.obs["batch"].cat.codes, random_state=seed).mean()
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--presets", nargs="+", default=["sim1", "sim2", "sim3"])
    parser.add_argument("--n-cells", type=int, default=2000)
    parser.add_argument("--n-peaks", type=int, default=2500)
    parser.add_argument("--depth-scale", type=float, default=0.1)
    parser.add_argument("--max-epochs", type=int, default=80)
    parser.add_argument("--n-hidden", type=int, nargs="+", default=[1000, 100])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--name", default="scatac")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sf.settings.progress_bar = False
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    rows = []
    for preset in args.presets:
        for seed in args.seeds:
            adata = simulate(preset, args.n_cells, args.n_peaks, args.depth_scale, seed)
            density = float((adata.X > 0).mean())
            batch_key = "batch" if adata.obs["batch"].nunique() > 1 else None
            t0 = time.perf_counter()
            sf.tl.embed(
                adata,
                "sailer",
                layer="counts",
                batch_key=batch_key,
                max_epochs=args.max_epochs,
                model_kwargs={"n_hidden": tuple(args.n_hidden)},
                seed=seed,
            )
            timings = {"sailer": time.perf_counter() - t0}
            t0 = time.perf_counter()
            embeddings = {"sailer": adata.obsm["X_sailer"], "lsi": lsi(adata)}
            timings["lsi"] = time.perf_counter() - t0
            if batch_key is not None:
                t0 = time.perf_counter()
                embeddings["lsi_harmony"] = harmony(embeddings["lsi"], adata.obs["batch"], seed)
                timings["lsi_harmony"] = timings["lsi"] + time.perf_counter() - t0
            for method, Z in embeddings.items():
                row = {
                    "preset": preset,
                    "seed": seed,
                    "method": method,
                    **scores(Z, adata, seed),
                    "seconds": round(timings[method], 1),
                    "density": round(density, 4),
                }
                rows.append(row)
                print(row, flush=True)
    table = pd.DataFrame(rows)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.name}.json"), "w") as fh:
        json.dump({"command": command, "rows": rows}, fh, indent=1)
    metrics = [
        c for c in ("ARI", "NMI", "ARI@k", "I(z,depth)", "I(z,batch)", "seconds") if c in table
    ]
    mean = table.groupby(["preset", "method"])[metrics].mean().round(3)
    with open(os.path.join(args.out, f"{args.name}.md"), "w") as fh:
        fh.write("# scATAC-seq: SAILER vs LSI (+ Harmony) on simulations\n\n")
        fh.write(f"Command: `{command}`  \nDate: {datetime.now():%Y-%m-%d %H:%M}, CPU.\n\n")
        fh.write(
            f"{args.n_cells} cells, {args.n_peaks} MoP pseudo-bulk peaks + as many "
            f"background bins, fragments x {args.depth_scale}, SAILER {args.max_epochs} "
            f"epochs, hidden {args.n_hidden}, seeds {args.seeds}.\n\n## Mean over seeds\n\n"
        )
        fh.write(mean.to_markdown() + "\n\n## Every run\n\n")
        fh.write(table.round(4).to_markdown(index=False) + "\n")
    print(mean)


if __name__ == "__main__":
    main()
