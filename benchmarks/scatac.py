r"""scATAC-seq benchmark: SAILER against LSI, SnapATAC2, PeakVI (+ Harmony) on SAILER's simulations.

Data: :func:`scfound.datasets.simulate_atac` with the presets of the SAILER paper (Sim1: deep, one
rare type at 1 %; Sim2: shallow, 9 types; Sim3: two batches differing in depth and signal, one
rare type specific to each batch). The bulk profiles are pseudo-bulk profiles of the MoP
SNARE-seq chromatin types (``../shared/data/mop_snareseq.h5mu``; per type, the fraction of its
cells in which each peak is accessible), restricted to the ``--n-peaks`` peaks that vary most
between the chosen types, plus as many background bins. To keep the density of a peak matrix
of ~100k peaks on a smaller one, the fragment counts of the presets are scaled by
``--depth-scale``.

``--presets mop`` runs the same methods and metrics on the real MoP chromatin instead:
``--n-cells`` random cells (per seed) and their ``--n-peaks`` most often accessible peaks, the
12 samples as batches (a confounder of SAILER and PeakVI, corrected by Harmony for LSI and
SnapATAC2), the 23 annotated types as labels and the count over all peaks as the depth.

Methods, all on the same counts in the same run:

* ``sailer``: ``scfound.tl.embed(..., method="sailer")`` (10-d latent; batch as a confounder
  on Sim3 and MoP);
* ``lsi``: ``muon.atac.pp.tfidf`` + ``muon.atac.tl.lsi`` (11 components, the first, which
  follows depth, dropped: 10 dimensions, as users run it);
* ``snapatac2``: ``snapatac2.tl.spectral`` on all features (its default 30 components; it
  returns fewer when eigenvalues vanish);
* ``peakvi``: ``scvi.model.PEAKVI`` with its defaults (10-d latent for comparability; up to 500
  epochs with early stopping; batch as a covariate on Sim3 and MoP);
* ``*_harmony`` (Sim3 and MoP): the LSI and SnapATAC2 components corrected by ``harmonypy``.

Metrics, the same for every method: Leiden ARI/NMI with the labels through
:func:`scfound.metrics.clustering_scores` on the embedding as users cluster it (a 15-neighbour
graph on the embedding itself, ``n_pcs=None``; Leiden at resolutions 0.1-2.0): ``ARI`` and
``NMI`` at the resolution with the best ARI, ``ARI@k`` at the resolution whose number of
clusters is closest to the number of types; cell-type ASW (``scib_metrics.silhouette_label``,
rescaled to [0, 1]); the recall of the rare types (the share of their cells whose 15 nearest
neighbours in the embedding are mostly of their own type); I(z, depth) (mean over dimensions of
the KSG mutual information with the log fragment count,
:func:`scfound.metrics.confounder_information`); and with batches (Sim3, MoP) batch mixing:
I(z, batch) (the same, batch as categories), batch ASW (``scib_metrics.silhouette_batch``) and iLISI
(``scib_metrics.ilisi_knn`` on a 90-neighbour graph), both scaled so that 1 is perfect mixing,
and ``mix_TV``, SAILER's 50-neighbour batch composition
(:func:`scfound.metrics.neighbor_batch_composition`) summarised as the mean total-variation
distance of each cell's size-corrected batch shares to uniform (0 is perfect mixing).

Usage::

    python benchmarks/scatac.py --seeds 0 1
    # or one preset per process, then one report from their JSON files
    python benchmarks/scatac.py --presets sim1 --name scatac_sim1  # ... sim2, sim3
    python benchmarks/scatac.py --combine results/scatac_sim1.json ... --name scatac

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

import scfound as sf
from scfound.metrics import clustering_scores

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


def mop_chromatin(n_cells: int, n_peaks: int, seed: int):
    """Real MoP SNARE-seq chromatin: ``n_cells`` random cells, their most often accessible peaks.

    ``obs["n_fragments"]`` is each cell's count over all 25,734 peaks (the depth a user would
    compute), ``obs["batch"]`` its sample (12) and ``obs["cell_type"]`` its type (23).
    """
    atac = mudata.read_h5mu(DATA)["atac"]
    rng = np.random.default_rng(seed)
    cells = np.sort(rng.choice(atac.n_obs, min(n_cells, atac.n_obs), replace=False))
    atac = atac[cells].copy()
    counts = atac.layers["counts"]
    per_peak = np.asarray((counts > 0).sum(0)).ravel()
    peaks = np.sort(np.argsort(-per_peak, kind="stable")[:n_peaks])
    adata = atac[:, peaks].copy()
    adata.obs["n_fragments"] = np.asarray(counts.sum(1)).ravel()
    adata.obs["batch"] = adata.obs["batch"].astype(str).astype("category")
    adata.X = adata.layers["counts"].copy()
    return adata


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


def peakvi(adata, batch_key: str | None, seed: int) -> np.ndarray:
    """PeakVI (scvi-tools) with its defaults and a 10-d latent."""
    import scvi

    scvi.settings.seed = seed
    work = adata.copy()
    scvi.model.PEAKVI.setup_anndata(work, layer="counts", batch_key=batch_key)
    model = scvi.model.PEAKVI(work, n_latent=N_LATENT)
    model.train(enable_progress_bar=False)
    return model.get_latent_representation()


def spectral(adata, seed: int) -> np.ndarray:
    """SnapATAC2's spectral embedding on every feature (its default 30 components)."""
    import anndata as ad
    import snapatac2 as snap

    work = ad.AnnData(
        adata.layers["counts"].astype(np.float32), obs=adata.obs[[]], var=adata.var[[]]
    )
    snap.tl.spectral(work, features=None, random_state=seed, num_threads=1)
    return np.asarray(work.obsm["X_spectral"])


def rare_recall(Z: np.ndarray, labels: pd.Series, n_neighbors: int = 15) -> float:
    """Mean over the rare types of the share of their cells with a same-type kNN majority."""
    from sklearn.neighbors import NearestNeighbors

    rare = [t for t in labels.unique() if "(rare)" in str(t)]
    if not rare:
        return float("nan")
    codes = labels.to_numpy()
    _, idx = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(Z).kneighbors(Z)
    same = codes[idx[:, 1:]] == codes[:, None]
    return float(np.mean([(same[codes == t].mean(1) > 0.5).mean() for t in rare]))


def scores(Z: np.ndarray, adata, seed: int) -> dict:
    import scib_metrics
    from scib_metrics.nearest_neighbors import pynndescent

    Z = np.asarray(Z, dtype=np.float32)
    labels = adata.obs["cell_type"].astype(str)
    depth = np.log(adata.obs["n_fragments"].to_numpy())
    leiden = clustering_scores(Z, labels, n_pcs=None, seed=seed, at_n_labels=True)
    row = {
        "ARI": leiden["ari"],
        "NMI": leiden["nmi"],
        "ARI@k": leiden["ari_at_k"],
        "ASW_type": float(scib_metrics.silhouette_label(Z, labels.to_numpy())),
        "rare_recall": rare_recall(Z, labels),
        "I(z,depth)": sf.metrics.confounder_information(Z, depth, seed=seed),
    }
    if adata.obs["batch"].nunique() > 1:
        batch = adata.obs["batch"].astype(str).to_numpy()
        row["I(z,batch)"] = sf.metrics.confounder_information(Z, batch, seed=seed)
        row["ASW_batch"] = float(scib_metrics.silhouette_batch(Z, labels.to_numpy(), batch))
        row["iLISI"] = float(
            scib_metrics.ilisi_knn(pynndescent(Z, n_neighbors=90, random_state=seed), batch)
        )
        shares = sf.metrics.neighbor_batch_composition(Z, batch, n_neighbors=50)
        uniform = 1.0 / shares.shape[1]
        row["mix_TV"] = float(0.5 * np.abs(shares.to_numpy() - uniform).sum(1).mean())
    return row


def report(rows: list[dict], commands: list[str], settings: str, path_md: str) -> None:
    """Mean over seeds and every run, as Markdown."""
    table = pd.DataFrame(rows)
    metrics = [c for c in METRICS if c in table]
    mean = table.groupby(["preset", "method"])[metrics].mean().round(3)
    with open(path_md, "w") as fh:
        fh.write("# scATAC-seq: SAILER vs LSI, SnapATAC2, PeakVI (+ Harmony)\n\n")
        fh.write("Commands (OMP_NUM_THREADS=1, 2 CPU cores shared with other jobs):\n\n")
        fh.write("".join(f"- `{c}`\n" for c in commands))
        seeds = sorted({int(row["seed"]) for row in rows})
        settings = settings.split("; seeds")[0].rstrip(".")  # runs before seeds were reported here
        fh.write(f"\nDate: {datetime.now():%Y-%m-%d %H:%M}, CPU.\n\n{settings}; seeds {seeds}.\n\n")
        fh.write("## Mean over seeds\n\n" + mean.to_markdown() + "\n\n## Every run\n\n")
        fh.write(table.round(4).to_markdown(index=False) + "\n")
    print(mean)


#: columns of the report, in order
METRICS = (
    "ARI",
    "NMI",
    "ARI@k",
    "ASW_type",
    "rare_recall",
    "I(z,depth)",
    "I(z,batch)",
    "ASW_batch",
    "iLISI",
    "mix_TV",
    "seconds",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--presets",
        nargs="+",
        default=["sim1", "sim2", "sim3"],
        choices=["sim1", "sim2", "sim3", "mop"],
        help="simulations, or mop: the real MoP chromatin (--n-cells cells, --n-peaks peaks)",
    )
    parser.add_argument("--methods", nargs="+", default=["lsi", "snapatac2", "peakvi", "sailer"])
    parser.add_argument("--n-cells", type=int, default=1000)
    parser.add_argument("--n-peaks", type=int, default=1500)
    parser.add_argument("--depth-scale", type=float, default=0.1)
    parser.add_argument("--max-epochs", type=int, default=120)
    parser.add_argument("--n-hidden", type=int, nargs="+", default=[256, 64])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--name", default="scatac")
    parser.add_argument("--combine", nargs="+", help="JSON files of earlier runs to report as one")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sf.settings.progress_bar = False
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    data = (
        f"{args.n_cells} random MoP SNARE-seq cells per seed, their {args.n_peaks} most often "
        "accessible peaks, 12 samples as batches"
        if args.presets == ["mop"]
        else f"{args.n_cells} cells, {args.n_peaks} MoP pseudo-bulk peaks + as many background "
        f"bins, fragments x {args.depth_scale}"
    )
    settings = (
        f"{data}; SAILER {args.max_epochs} epochs, hidden {args.n_hidden}, its defaults "
        "otherwise (`pos_weight=1`)."
    )
    os.makedirs(args.out, exist_ok=True)
    if args.combine:
        runs = [json.load(open(path)) for path in args.combine]
        rows = [row for run in runs for row in run["rows"]]
        commands = [run["command"] for run in runs] + [command]
        with open(os.path.join(args.out, f"{args.name}.json"), "w") as fh:
            json.dump({"commands": commands, "rows": rows}, fh, indent=1)
        report(rows, commands, runs[0].get("settings", ""), f"{args.out}/{args.name}.md")
        return
    rows = []
    for preset in args.presets:
        for seed in args.seeds:
            if preset == "mop":
                adata = mop_chromatin(args.n_cells, args.n_peaks, seed)
            else:
                adata = simulate(preset, args.n_cells, args.n_peaks, args.depth_scale, seed)
            density = float((adata.X > 0).mean())
            batch_key = "batch" if adata.obs["batch"].nunique() > 1 else None
            embeddings, timings = {}, {}
            for method in args.methods:
                t0 = time.perf_counter()
                if method == "sailer":
                    sf.tl.embed(
                        adata,
                        "sailer",
                        layer="counts",
                        batch_key=batch_key,
                        max_epochs=args.max_epochs,
                        model_kwargs={"n_hidden": tuple(args.n_hidden)},
                        seed=seed,
                    )
                    embeddings[method] = adata.obsm["X_sailer"]
                elif method == "lsi":
                    embeddings[method] = lsi(adata)
                elif method == "snapatac2":
                    embeddings[method] = spectral(adata, seed)
                elif method == "peakvi":
                    embeddings[method] = peakvi(adata, batch_key, seed)
                else:
                    raise ValueError(f"unknown method {method!r}")
                timings[method] = time.perf_counter() - t0
                if batch_key is not None and method in ("lsi", "snapatac2"):
                    t0 = time.perf_counter()
                    corrected = harmony(embeddings[method], adata.obs["batch"], seed)
                    embeddings[f"{method}_harmony"] = corrected
                    timings[f"{method}_harmony"] = timings[method] + time.perf_counter() - t0
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
    with open(os.path.join(args.out, f"{args.name}.json"), "w") as fh:
        json.dump({"command": command, "settings": settings, "rows": rows}, fh, indent=1)
    report(rows, [command], settings, os.path.join(args.out, f"{args.name}.md"))


if __name__ == "__main__":
    main()
