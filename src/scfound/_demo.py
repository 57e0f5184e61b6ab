"""The main job: SpaFormer imputation of the bundled osmFISH section, scored on held-out entries.

Run with ``python -m scfound`` (or ``scfound-demo``). It holds out 30 % of the entries of the
osmFISH count matrix (the SpaFormer paper's protocol), trains SpaFormer with its default settings
on the rest (as ``sf.tl.impute(adata, layer="heldout_counts")`` does: spatial tiles of about 500
cells, same seed, same result), prints held-out RMSE / Pearson / cosine next to two reference
points (zero fill and gene means), and writes into ``--out``:

- ``osmfish_spaformer.h5ad``: the data with the mask (``layers["heldout"]``), the masked counts
  (``layers["heldout_counts"]``), the imputation (``layers["spaformer_imputed"]``) and the run
  record (``uns["scfound"]["impute"]["spaformer_imputed"]``);
- ``osmfish_spaformer_gene_scores.csv``: SpaFormer's held-out score of every gene (``gene``,
  ``pcc``, ``scc``, ``rmse``, ``n``; :func:`scfound.metrics.per_gene_scores`);
- ``osmfish_overall_scores.csv``: held-out RMSE, Pearson and cosine of SpaFormer, zero fill and
  gene means (:func:`scfound.metrics.imputation_scores`);
- ``spaformer_model/``: the trained model with the AnnData it was set up with
  (``sf.SpaFormer.load(path)``);
- ``osmfish_spaformer.png``: measured, imputed and held-out maps of the best, median and worst
  gene by held-out PCC, with their scores;
- ``osmfish_spaformer_scatter.png``: measured against imputed values at the held-out entries,
  all genes and the three genes of the maps.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.figure import Figure

    from scfound.models import SpaFormer

#: layer the demo trains on and the key of its imputation (the names ``sf.tl.impute`` uses)
TRAIN_LAYER = "heldout_counts"
IMPUTED_KEY = "spaformer_imputed"
#: cells per spatial tile, as ``sf.tl.impute`` cuts a section without fields of view
CELLS_PER_TILE = 500
TILE_KEY = "spatial_tile"
HELDOUT_FRACTION = 0.3

H5AD = "osmfish_spaformer.h5ad"
GENE_SCORES_CSV = "osmfish_spaformer_gene_scores.csv"
OVERALL_SCORES_CSV = "osmfish_overall_scores.csv"
MODEL_DIR = "spaformer_model"
MAPS_PNG = "osmfish_spaformer.png"
SCATTER_PNG = "osmfish_spaformer_scatter.png"


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m scfound", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="scfound_demo_output", help="output folder")
    parser.add_argument("--max-epochs", type=int, default=200, help="SpaFormer training epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import scfound as sf
    from scfound._utils import record

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    adata = sf.datasets.osmfish()
    print(f"osmFISH: {adata.n_obs} cells x {adata.n_vars} genes")
    sf.pp.mask_entries(adata, fraction=HELDOUT_FRACTION, layer="counts", seed=args.seed)
    mask = np.asarray(adata.layers["heldout"], dtype=bool)
    print(f"held out {mask.sum()} of {mask.size} entries (30 %, zeros included)")

    start = time.perf_counter()
    model = fit_spaformer(adata, layer=TRAIN_LAYER, max_epochs=args.max_epochs, seed=args.seed)
    adata.layers[IMPUTED_KEY] = imputed_counts(model)
    elapsed = time.perf_counter() - start
    epochs = _trained_epochs(model, args.max_epochs)
    record(
        adata,
        "impute",
        IMPUTED_KEY,
        {
            "method": "spaformer",
            "key_added": IMPUTED_KEY,
            "layer": TRAIN_LAYER,
            "group_key": None,
            "scale": "counts",
            "max_epochs": args.max_epochs,
            "seed": args.seed,
            "epochs": epochs,
            "seconds": round(elapsed, 1),
            "model": model._model_summary_string,
            "by": "python -m scfound",
        },
    )

    truth = adata.layers["counts"]
    observed = adata.layers[TRAIN_LAYER]
    observed_dense = observed.toarray() if hasattr(observed, "toarray") else np.asarray(observed)
    rows = {
        "zero fill": observed_dense + 1e-12,
        "gene mean": np.broadcast_to(observed_dense.mean(0), observed_dense.shape),
        "SpaFormer": adata.layers[IMPUTED_KEY],
    }
    print(f"\nheld-out scores (log-normalised space), SpaFormer trained in {elapsed:.0f} s")
    print(f"{'method':<12}{'RMSE':>8}{'Pearson':>9}{'cosine':>8}")
    overall = []
    for name, imputed in rows.items():
        s = sf.metrics.imputation_scores(truth, imputed, mask)
        overall.append({"method": name, **s, "n_heldout": int(mask.sum())})
        print(f"{name:<12}{s['rmse']:>8.4f}{s['pearson']:>9.4f}{s['cosine']:>8.4f}")
    overall = pd.DataFrame(overall)
    scores = sf.metrics.per_gene_scores(
        truth, adata.layers[IMPUTED_KEY], mask, gene_names=adata.var_names
    )
    scores.index.name = "gene"
    picked = pick_genes(scores)
    print(
        "\nper-gene held-out PCC: "
        + ", ".join(f"{r} {g} {scores.at[g, 'pcc']:.3f}" for r, g in picked.items())
    )

    h5ad = out / H5AD
    adata.write_h5ad(h5ad)
    scores.to_csv(out / GENE_SCORES_CSV, index_label="gene")
    overall.to_csv(out / OVERALL_SCORES_CSV, index=False)
    model.save(str(out / MODEL_DIR), overwrite=True, save_anndata=True)

    dataset = f"osmFISH ({adata.n_obs:,} cells x {adata.n_vars} genes)"
    method = f"SpaFormer, {epochs} epoch{'s' if epochs != 1 else ''}"
    genes = list(dict.fromkeys(picked.values()))
    sf.pl.imputed_genes(
        adata,
        genes,
        method="spaformer",
        measured_layer="counts",
        mask_layer="heldout",
        scores=scores,
        title=(
            f"{dataset}: {method}, {HELDOUT_FRACTION:.0%} of entries held out\n"
            "rows: " + ", ".join(f"{rank} gene by held-out PCC ({g})" for rank, g in picked.items())
        ),
        save=out / MAPS_PNG,
        show=False,
    )
    heldout_scatter(
        adata,
        picked,
        scores,
        overall.set_index("method").loc["SpaFormer"],
        title=f"{dataset}: {method}, measured vs imputed at the held-out entries",
        save=out / SCATTER_PNG,
    )
    written = [H5AD, GENE_SCORES_CSV, OVERALL_SCORES_CSV, MODEL_DIR + "/", MAPS_PNG, SCATTER_PNG]
    print(f"\nwrote into {out}: " + ", ".join(written))


def fit_spaformer(adata: AnnData, *, layer: str, max_epochs: int, seed: int) -> SpaFormer:
    """Train a SpaFormer with its default settings as ``sf.tl.impute`` does.

    The model is set up on a new AnnData that shares ``adata``'s counts (under ``layer``) and
    coordinates, cut into square spatial tiles of about :data:`CELLS_PER_TILE` cells, so that
    ``adata`` itself is not changed.

    Parameters
    ----------
    adata
        The section, with counts in ``layers[layer]`` and coordinates in ``obsm["spatial"]``.
    layer
        Layer to train on.
    max_epochs
        Training epochs.
    seed
        Seed of the initial weights and of training.

    Returns
    -------
    The trained model; ``model.adata`` is the AnnData it was set up with.
    """
    import scvi
    from anndata import AnnData

    import scfound as sf
    from scfound._utils import get_matrix, get_spatial

    small = AnnData(
        obs=pd.DataFrame(index=adata.obs_names.copy()),
        var=pd.DataFrame(index=adata.var_names.copy()),
        obsm={"spatial": get_spatial(adata, "spatial")},
        layers={layer: get_matrix(adata, layer)},
    )
    n_tiles = max(round(small.n_obs / CELLS_PER_TILE), 1)
    sf.pp.spatial_tiles(small, n_tiles=n_tiles, key_added=TILE_KEY, min_cells=2)
    scvi.settings.seed = seed
    sf.SpaFormer.setup_anndata(small, layer=layer, spatial_key="spatial", group_key=TILE_KEY)
    model = sf.SpaFormer(small)
    model.train(max_epochs=max_epochs, seed=seed)
    return model


def imputed_counts(model: SpaFormer) -> np.ndarray:
    """Imputation of every entry on the count scale of the input, ``float32``, cells x genes."""
    values = model.get_imputed_expression(model.adata, scale="counts")
    if isinstance(values, pd.DataFrame):
        values = values.to_numpy()
    return np.asarray(values, dtype=np.float32)


def pick_genes(scores: pd.DataFrame, metric: str = "pcc") -> dict[str, str]:
    """The best, median and worst gene by ``metric`` (higher is better), NaN scores skipped.

    Returns
    -------
    ``{"best": gene, "median": gene, "worst": gene}``; with fewer than three scored genes the
    same gene can fill several ranks.
    """
    ranked = scores[metric].dropna().sort_values(ascending=False, kind="stable")
    if ranked.empty:
        raise ValueError(f"no gene has a finite {metric!r} score.")
    index = ranked.index
    return {"best": index[0], "median": index[len(index) // 2], "worst": index[-1]}


def heldout_scatter(
    adata: AnnData,
    picked: dict[str, str],
    scores: pd.DataFrame,
    overall: pd.Series,
    *,
    title: str,
    save: Path,
    measured_layer: str = "counts",
    mask_layer: str = "heldout",
) -> Figure:
    """Measured against imputed values at the held-out entries, in the scored space.

    Both matrices are normalised per cell by their own totals to the median total of the
    measured counts and ``log1p``-transformed, as :func:`scfound.metrics.imputation_scores`
    does, so the panels show exactly the values behind the scores. The first panel pools every
    held-out entry (hexagonal bins, counts on a log scale); one panel per picked gene follows.
    """
    import matplotlib.pyplot as plt

    from scfound.metrics import normalize_log1p
    from scfound.pl._utils import finish_figure

    truth = adata.layers[measured_layer]
    totals = np.asarray(truth.sum(axis=1), dtype=np.float64).ravel()
    target = float(np.median(totals))
    t = normalize_log1p(truth, target)
    p = normalize_log1p(adata.layers[IMPUTED_KEY], target)
    mask = np.asarray(adata.layers[mask_layer], dtype=bool)

    genes = list(dict.fromkeys(picked.values()))
    fig, axes = plt.subplots(
        1, 1 + len(genes), figsize=(3.6 * (1 + len(genes)), 3.9), layout="constrained"
    )
    hb = axes[0].hexbin(t[mask], p[mask], gridsize=45, bins="log", mincnt=1, cmap="viridis")
    fig.colorbar(hb, ax=axes[0], shrink=0.8, label="entries")
    axes[0].set_title(
        f"all held-out entries (n={int(mask.sum()):,})\n"
        f"Pearson {overall['pearson']:.3f}, RMSE {overall['rmse']:.3f}",
        fontsize="medium",
    )
    ranks = {gene: [r for r, g in picked.items() if g == gene] for gene in genes}
    for ax, gene in zip(axes[1:], genes, strict=True):
        j = adata.var_names.get_loc(gene)
        sel = mask[:, j]
        ax.scatter(t[sel, j], p[sel, j], s=4, alpha=0.4, linewidths=0, rasterized=True)
        ax.set_title(
            f"{gene} ({' / '.join(ranks[gene])} PCC)\n"
            f"PCC {scores.at[gene, 'pcc']:.3f}, RMSE {scores.at[gene, 'rmse']:.3f}",
            fontsize="medium",
        )
    for ax in axes:
        low = min(ax.get_xlim()[0], ax.get_ylim()[0])
        high = max(ax.get_xlim()[1], ax.get_ylim()[1])
        ax.plot([low, high], [low, high], color="0.4", lw=0.8, ls="--", label="y = x")
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        ax.set_aspect("equal")
        ax.set_xlabel("measured (log1p, normalised)")
        ax.set_ylabel("imputed (log1p, normalised)")
    axes[0].legend(loc="upper left", fontsize="small", frameon=False)
    fig.suptitle(title)
    return finish_figure(fig, show=False, save=save)


def _trained_epochs(model: SpaFormer, default: int) -> int:
    history = getattr(model, "history_", None) or {}
    for key in ("train_loss", "train_loss_epoch"):
        if key in history and len(history[key]):
            return len(history[key])
    return default


if __name__ == "__main__":  # pragma: no cover
    main()
