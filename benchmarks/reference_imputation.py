r"""Reference-based imputation and annotation benchmark: stAI against baselines (stAI protocol).

Two settings, both on real data from ``../shared/data``:

* ``a``: osmFISH (4,363 cells x 33 genes) split at random (seeded) into two halves of cells: one
  half is the spatial query (with coordinates), the other the reference, without coordinates,
  with its ``cell_type`` labels (31 types). All 33 genes are shared.
* ``b``: all osmFISH cells as the spatial query, the SNARE-seq MoP RNA (10,309 cells x 1,677
  genes, 23 types) as the reference; 20 genes are shared. Annotation here is on six broad
  classes that both label sets map onto (:data:`BROAD_OSMFISH`, :data:`BROAD_MOP`); cells of
  other types are left out of the annotation task in both datasets (stAI spec section 7, row 16).

Imputation is leave-one-gene-out over the shared genes: for each gene ``g`` the query loses
``g``, each method imputes ``g`` from the reference, and the prediction is scored against the
held-out counts with :func:`scfound.metrics.heldout_gene_scores` (per-gene PCC, SCC, RMSE of
z-scores, JSD). Annotation trains on the reference's labels only and is scored on the query cells
with :func:`scfound.metrics.annotation_scores`. Every method of every setting and task runs in a
child process of its own, which reports its wall time per gene and its peak resident memory.

Methods: stAI (``scfound.tl.impute``/``annotate`` with ``method='stai'``), a SpaGE-like kNN
imputer, gimVI and Tangram for imputation; stAI, kNN label transfer, scANVI and Tangram for
annotation (see ``_reference_baselines.py``).

Usage::

    python benchmarks/reference_imputation.py                       # everything
    # smoke test of the baselines: setting a, two genes, few epochs
    python benchmarks/reference_imputation.py --settings a --genes 2 \
      --methods spage tangram gimvi knn scanvi --tangram-epochs 100 --gimvi-epochs 5 \
      --scvi-epochs 5 --scanvi-epochs 2 --out /tmp/refimp

Writes ``reference_imputation.md`` and ``reference_imputation.json`` into ``--out`` (default
``benchmarks/results``), after every method, with the command line at the top.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import mannwhitneyu

import _reference_baselines as baselines  # sibling module of this script
import scfound as sf

DATA = "../shared/data"  # relative to the repository root, where the script is run from
MOP = f"{DATA}/mop_snareseq.h5mu"
COSMX = f"{DATA}/cosmx_lung12_mini.h5ad"
LABELS = "cell_type"

IMPUTERS = ("stai", "spage", "tangram", "gimvi")
ANNOTATORS = ("stai", "knn", "scanvi", "tangram")
METHODS = ("stai", "spage", "tangram", "gimvi", "knn", "scanvi")
NAMES = {
    "stai": "stAI",
    "spage": "SpaGE-like (PCA + cosine kNN)",
    "tangram": "Tangram (cells mode)",
    "gimvi": "gimVI",
    "knn": "kNN label transfer (k=15)",
    "scanvi": "scANVI",
}
#: extra outputs of a method run with ``--reference-smoothing``: the same fit, not smoothed
UNSMOOTHED = {"stai": "stai_unsmoothed", "spage": "spage_unsmoothed"}
NAMES |= {
    "stai_unsmoothed": "stAI, reference not smoothed",
    "spage_unsmoothed": "SpaGE-like, reference not smoothed",
}

#: osmFISH cell type -> broad class shared with MoP (None: left out of the annotation task).
BROAD_OSMFISH: dict[str, str | None] = {
    **{
        t: "Excitatory"
        for t in [
            "Pyramidal L2-3",
            "Pyramidal L2-3 L5",
            "Pyramidal L3-4",
            "pyramidal L4",
            "Pyramidal L5",
            "Pyramidal L6",
            "Pyramidal Cpne5",
            "Pyramidal Kcnip2",
        ]
    },
    **{
        t: "Inhibitory"
        for t in [
            "Inhibitory CP",
            "Inhibitory Cnr1",
            "Inhibitory Crhbp",
            "Inhibitory IC",
            "Inhibitory Kcnip2",
            "Inhibitory Pthlh",
            "Inhibitory Vip",
        ]
    },
    **{
        t: "Oligodendrocyte"
        for t in [
            "Oligodendrocyte COP",
            "Oligodendrocyte MF",
            "Oligodendrocyte Mature",
            "Oligodendrocyte NF",
            "Oligodendrocyte Precursor cells",
        ]
    },
    "Astrocyte Gfap": "Astrocyte",
    "Astrocyte Mfge8": "Astrocyte",
    "Microglia": "Microglia",
    "Endothelial": "Vascular",
    "Endothelial 1": "Vascular",
    "Pericytes": "Vascular",
    # no counterpart among the MoP types
    "Hippocampus": None,
    "Ependymal": None,
    "C. Plexus": None,
    "Perivascular Macrophages": None,
    "Vascular Smooth Muscle": None,
}

#: MoP SNARE-seq cell type -> broad class (None: left out of the annotation task).
BROAD_MOP: dict[str, str | None] = {
    **{
        t: "Excitatory"
        for t in [
            "E2Rasgrf2",
            "E3Rmst",
            "E3Rorb",
            "E4Il1rapl2",
            "E4Thsd7a",
            "E5Galnt14",
            "E5Parm1",
            "E5Sulf1",
            "E5Tshz2",
            "E6Tle4",
            "Clau",
        ]
    },
    **{t: "Inhibitory" for t in ["InN", "InP", "InS", "InV"]},
    "OliM": "Oligodendrocyte",
    "OliI": "Oligodendrocyte",
    "OPC": "Oligodendrocyte",
    "Ast": "Astrocyte",
    "Mic": "Microglia",
    "Endo": "Vascular",
    "Peri": "Vascular",
    "Mis": None,  # "miscellaneous" in the source: no defined class
}

MAPPING_NOTE = (
    "Broad classes: Excitatory (osmFISH Pyramidal *; MoP E* layers and Clau, the claustrum-like "
    "glutamatergic cluster), Inhibitory (Inhibitory *; InN/InP/InS/InV), Oligodendrocyte incl. "
    "OPC (Oligodendrocyte COP/MF/Mature/NF/Precursor cells; OliM/OliI/OPC), Astrocyte "
    "(Astrocyte Gfap/Mfge8; Ast), Microglia (Microglia; Mic), Vascular = endothelial + "
    "pericytes (Endothelial, Endothelial 1, Pericytes; Endo, Peri). Left out: osmFISH "
    "Hippocampus, Ependymal, C. Plexus, Perivascular Macrophages, Vascular Smooth Muscle (no MoP "
    "counterpart) and MoP Mis (miscellaneous, no defined class)."
)


# --------------------------------------------------------------------------------------------
# settings (parent process)
# --------------------------------------------------------------------------------------------


@dataclass
class Setting:
    """One query/reference pair with its held-out genes and annotation task."""

    name: str
    title: str
    query: ad.AnnData
    reference: ad.AnnData
    genes: list[str]
    ann_query: ad.AnnData | None
    ann_reference: ad.AnnData | None
    ann_truth: np.ndarray | None
    ann_title: str
    notes: list[str] = field(default_factory=list)


def counts_adata(
    X: Any, obs_names: pd.Index, var_names: pd.Index, obs: pd.DataFrame | None = None
) -> ad.AnnData:
    """A fresh AnnData with raw counts in ``.X`` and ``layers['counts']`` (CSR, float32)."""
    X = sp.csr_matrix(X, dtype=np.float32)
    adata = ad.AnnData(
        X,
        obs=obs.copy() if obs is not None else pd.DataFrame(index=obs_names.copy()),
        var=pd.DataFrame(index=var_names.copy()),
    )
    adata.obs_names = obs_names.copy()
    adata.layers["counts"] = X.copy()
    return adata


def osmfish_query(osm: ad.AnnData) -> ad.AnnData:
    """Spatial query: counts and coordinates, no labels."""
    query = counts_adata(osm.layers["counts"], osm.obs_names, osm.var_names)
    query.obsm["spatial"] = np.asarray(osm.obsm["spatial"], dtype=np.float64)
    return query


def select_genes(shared: list[str], args: argparse.Namespace) -> list[str]:
    """Held-out genes: ``--gene-names`` if given, else the first ``--genes`` shared genes."""
    if args.gene_names:
        missing = [g for g in args.gene_names if g not in shared]
        genes = [g for g in args.gene_names if g in shared]
        if missing:
            print(f"skipping genes the setting does not share: {missing}", flush=True)
        return genes
    return shared[: args.genes] if args.genes else shared


def make_setting_a(args: argparse.Namespace) -> Setting:
    """Two osmFISH halves: query with coordinates, reference without, same 31 labels."""
    osm = sf.datasets.osmfish()
    perm = np.random.default_rng(args.seed).permutation(osm.n_obs)
    half = osm.n_obs // 2
    q_idx, r_idx = np.sort(perm[:half]), np.sort(perm[half:])
    query = osmfish_query(osm[q_idx])
    ref_osm = osm[r_idx]
    reference = counts_adata(
        ref_osm.layers["counts"],
        ref_osm.obs_names,
        ref_osm.var_names,
        obs=ref_osm.obs[[LABELS]].astype(str),
    )
    truth = osm.obs[LABELS].astype(str).to_numpy()[q_idx]
    shared = [g for g in query.var_names if g in set(reference.var_names)]
    return Setting(
        name="a",
        title=(
            f"(a) osmFISH halves: query {query.n_obs} cells with coordinates, reference "
            f"{reference.n_obs} cells without coordinates (seed {args.seed}), "
            f"{len(shared)} shared genes"
        ),
        query=query,
        reference=reference,
        genes=select_genes(shared, args),
        ann_query=query,
        ann_reference=reference,
        ann_truth=truth,
        ann_title=f"31 osmFISH cell types ({query.n_obs} query cells)",
        notes=[
            "Both halves come from the same section and platform, so this is the easy case "
            "(no platform shift); the reference has the same 31 labels."
        ],
    )


def broad(labels: pd.Series, mapping: dict[str, str | None], what: str) -> np.ndarray:
    """Broad class of each label (object array, None where left out); unknown labels fail."""
    labels = labels.astype(str)
    unknown = sorted(set(labels) - set(mapping))
    if unknown:
        raise ValueError(f"{what} cell types without a broad-class mapping: {unknown}")
    return labels.map(mapping).to_numpy(dtype=object)


def class_counts(labels: np.ndarray) -> str:
    """``'A 10, B 3'``: the number of cells of each label, largest first."""
    counts = pd.Series(labels.astype(str)).value_counts()
    return ", ".join(f"{name} {n}" for name, n in counts.items())


def make_setting_b(args: argparse.Namespace) -> Setting:
    """All osmFISH cells against the MoP SNARE-seq RNA; annotation on shared broad classes."""
    import mudata

    osm = sf.datasets.osmfish()
    query = osmfish_query(osm)
    rna = mudata.read_h5mu(MOP)["rna"]
    reference = counts_adata(
        rna.layers["counts"],
        rna.obs_names,
        rna.var_names,
        obs=rna.obs[[LABELS, "batch"]].astype(str),
    )
    shared = [g for g in query.var_names if g in set(reference.var_names)]
    osm_broad = broad(osm.obs[LABELS], BROAD_OSMFISH, "osmFISH")
    mop_broad = broad(rna.obs[LABELS], BROAD_MOP, "MoP")
    q_keep = np.array([b is not None for b in osm_broad])
    r_keep = np.array([b is not None for b in mop_broad])
    ann_query = query[q_keep].copy()
    ann_reference = reference[r_keep].copy()
    ann_reference.obs[LABELS] = mop_broad[r_keep].astype(str)
    empty = int((baselines.counts_of(reference, shared).sum(axis=1) == 0).sum())
    library = float(np.median(baselines.counts_of(reference).sum(axis=1)))
    return Setting(
        name="b",
        title=(
            f"(b) osmFISH ({query.n_obs} cells) vs MoP SNARE-seq RNA ({reference.n_obs} cells, "
            f"{reference.n_vars} genes), {len(shared)} shared genes"
        ),
        query=query,
        reference=reference,
        genes=select_genes(shared, args),
        ann_query=ann_query,
        ann_reference=ann_reference,
        ann_truth=osm_broad[q_keep].astype(str),
        ann_title=(
            f"6 broad classes: {int(q_keep.sum())} of {query.n_obs} osmFISH cells and "
            f"{int(r_keep.sum())} of {reference.n_obs} MoP cells kept"
        ),
        notes=[
            "Cross-platform, cross-region pair: the reference is another cortical area "
            "(primary motor vs somatosensory cortex), another technology and another lab.",
            f"{empty} of {reference.n_obs} MoP cells ({empty / reference.n_obs:.0%}) have no count "
            f"in the {len(shared)} shared genes (median MoP library {library:.0f} counts over "
            f"{reference.n_vars} genes); all are kept for every method.",
            MAPPING_NOTE,
            "Annotation cells per broad class: query "
            + class_counts(osm_broad[q_keep])
            + "; reference "
            + class_counts(mop_broad[r_keep])
            + ".",
        ],
    )


def make_setting_c(args: argparse.Namespace) -> Setting:
    """CosMx Lung12 (960-gene panel) split by field of view: one FOV is the query."""
    cosmx = ad.read_h5ad(COSMX)
    fov = cosmx.obs["fov"].astype(str).to_numpy()
    q_idx, r_idx = np.flatnonzero(fov == fov[0]), np.flatnonzero(fov != fov[0])
    query = counts_adata(cosmx.layers["counts"][q_idx], cosmx.obs_names[q_idx], cosmx.var_names)
    query.obsm["spatial"] = np.asarray(cosmx.obsm["spatial"][q_idx], dtype=np.float64)
    reference = counts_adata(cosmx.layers["counts"][r_idx], cosmx.obs_names[r_idx], cosmx.var_names)
    total = baselines.counts_of(cosmx).sum(axis=0)
    top = [str(g) for g in cosmx.var_names[np.argsort(-total, kind="stable")[:20]]]
    genes = select_genes(top, args) if args.gene_names else top[: args.genes or 20]
    return Setting(
        name="c",
        title=(
            f"(c) CosMx Lung12 split by FOV: query FOV {fov[0]} ({query.n_obs} cells, with "
            f"coordinates), reference the other FOV ({reference.n_obs} cells, without), "
            f"{cosmx.n_vars} shared genes; held out: the 20 with the most counts"
        ),
        query=query,
        reference=reference,
        genes=genes,
        ann_query=None,
        ann_reference=None,
        ann_truth=None,
        ann_title="no cell-type labels: annotation not run",
        notes=[
            "A targeted-panel reference of the same platform, as a section split in two; with "
            "about 60 cells per half it is a small stand-in and its medians are noisy."
        ],
    )


SETTINGS: dict[str, Callable[[argparse.Namespace], Setting]] = {
    "a": make_setting_a,
    "b": make_setting_b,
    "c": make_setting_c,
}


# --------------------------------------------------------------------------------------------
# methods (child process)
# --------------------------------------------------------------------------------------------


def tangram_device() -> str:
    """``'cuda'`` when a GPU is visible, else ``'cpu'``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def stai_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """Optional model/train keyword arguments of the stAI tools (only those given)."""
    out = {}
    if cfg.get("stai_model_kwargs"):
        out["model_kwargs"] = cfg["stai_model_kwargs"]
    if cfg.get("stai_train_kwargs"):
        out["train_kwargs"] = cfg["stai_train_kwargs"]
    return out


def impute_stai(
    query: ad.AnnData, reference: ad.AnnData, genes: list[str], cfg: dict
) -> np.ndarray:
    if cfg["stai_calibrate"]:
        return impute_stai_calibrated(query, reference, genes, cfg)
    given = {"scale": cfg["scale"]} if cfg["scale"] is not None else {}
    sf.tl.impute(
        query,
        reference=reference,
        method="stai",
        genes=genes,
        layer="counts",
        reference_layer="counts",
        spatial_key="spatial",
        max_epochs=cfg["stai_epochs"],
        seed=cfg["seed"],
        **given,
        **stai_kwargs(cfg),
    )
    run = query.uns["scfound"]["impute"]["stai_imputed"]
    for key in ("scale", "temperature", "reference_transform", "reference_smoothing"):
        if key in run:
            cfg["_params"].setdefault(key, []).append(plain(run[key]))
    return np.asarray(query.obsm["stai_imputed"][genes], dtype=np.float64)


def impute_stai_calibrated(
    query: ad.AnnData, reference: ad.AnnData, genes: list[str], cfg: dict
) -> np.ndarray:
    """Impute with stAI through the model API, at the temperature ``calibrate_imputation`` picks."""
    import torch

    sf.STAI.setup_anndata(query, layer="counts", spatial_key="spatial")
    sf.STAI.setup_anndata(reference, layer="counts")
    torch.manual_seed(cfg["seed"])
    model = sf.STAI(query, reference, **(cfg.get("stai_model_kwargs") or {}))
    model.train(
        max_epochs=cfg["stai_epochs"], seed=cfg["seed"], **(cfg.get("stai_train_kwargs") or {})
    )

    def calibrated(suffix: str = "") -> np.ndarray:
        scale = cfg["scale"] or "log1p"
        table = model.calibrate_imputation(scale=scale)
        params = cfg["_params"]
        params.setdefault(f"temperature{suffix}", []).append(model.imputation_temperature_)
        params.setdefault(f"calibration_pcc{suffix}", []).append(table.round(4).to_dict())
        return model.get_imputed_expression(genes=genes, scale=scale).to_numpy()

    smoothing = model.reference_smoothing
    if smoothing is None:
        return calibrated()
    model.reference_smoothing = None
    unsmoothed = calibrated("_unsmoothed")
    model.reference_smoothing = smoothing
    return {"stai": calibrated(), UNSMOOTHED["stai"]: unsmoothed}


def impute_spage(
    query: ad.AnnData, reference: ad.AnnData, genes: list[str], cfg: dict
) -> np.ndarray | dict[str, np.ndarray]:
    def run(smoothing: int | None) -> np.ndarray:
        out = baselines.spage_impute(
            query,
            reference,
            genes,
            n_pv=cfg["spage_npv"],
            k=cfg["spage_k"],
            seed=cfg["seed"],
            scale=cfg["scale"] or "log1p",
            reference_transform=cfg["reference_transform"] or "cp10k_log1p",
            reference_smoothing=smoothing,
        )
        return out[genes].to_numpy()

    if cfg["reference_smoothing"] is None:
        return run(None)
    return {"spage": run(cfg["reference_smoothing"]), UNSMOOTHED["spage"]: run(None)}


def impute_gimvi(
    query: ad.AnnData, reference: ad.AnnData, genes: list[str], cfg: dict
) -> np.ndarray:
    out = baselines.gimvi_impute(
        query,
        reference,
        genes,
        reference_genes=cfg["gimvi_genes"],
        max_epochs=cfg["gimvi_epochs"],
        seed=cfg["seed"],
        normalized=cfg["scale"] != "counts",
    )
    return out[genes].to_numpy()


def impute_tangram(
    query: ad.AnnData, reference: ad.AnnData, targets: list[str], cfg: dict
) -> np.ndarray:
    genes = [g for g in baselines.shared_genes(query, reference) if g not in set(targets)]
    sub = reference[:, [*genes, *targets]]
    adata_map, adata_sc = baselines.tangram_map(
        query, sub, genes, num_epochs=cfg["tangram_epochs"], seed=cfg["seed"], device=cfg["device"]
    )
    history = np.asarray(adata_map.uns["training_history"]["main_loss"], dtype=float)
    cfg["_params"].setdefault("train_cosine_final", []).append(float(history[-1]))
    cfg["_params"].setdefault("train_cosine_half", []).append(float(history[len(history) // 2]))
    return baselines.tangram_impute(adata_map, adata_sc, targets)[targets].to_numpy()


def annotate_stai(query: ad.AnnData, reference: ad.AnnData, cfg: dict) -> np.ndarray:
    query = query.copy()
    sf.tl.annotate(
        query,
        LABELS,
        reference=reference,
        method="stai",
        layer="counts",
        reference_layer="counts",
        max_epochs=cfg["stai_annotation_epochs"],
        seed=cfg["seed"],
        **stai_kwargs(cfg),
    )
    return query.obs["stai_prediction"].astype(str).to_numpy()


def annotate_knn(query: ad.AnnData, reference: ad.AnnData, cfg: dict) -> np.ndarray:
    return baselines.knn_annotate(
        query,
        reference,
        LABELS,
        n_pcs=cfg["spage_npv"],
        k=cfg["knn_k"],
        seed=cfg["seed"],
        reference_transform=cfg["reference_transform"] or "cp10k_log1p",
    )


def annotate_scanvi(query: ad.AnnData, reference: ad.AnnData, cfg: dict) -> np.ndarray:
    pred, epochs = baselines.scanvi_annotate(
        query,
        reference,
        LABELS,
        scvi_epochs=cfg["scvi_epochs"],
        scanvi_epochs=cfg["scanvi_epochs"],
        seed=cfg["seed"],
    )
    cfg["_params"].update(epochs)
    return pred


def annotate_tangram(query: ad.AnnData, reference: ad.AnnData, cfg: dict) -> np.ndarray:
    genes = baselines.shared_genes(query, reference)
    adata_map, _ = baselines.tangram_map(
        query,
        reference[:, genes],
        genes,
        num_epochs=cfg["tangram_epochs"],
        seed=cfg["seed"],
        device=cfg["device"],
    )
    return baselines.tangram_annotate(adata_map, LABELS)


IMPUTE_RUNNERS: dict[str, Callable[..., np.ndarray]] = {
    "stai": impute_stai,
    "spage": impute_spage,
    "tangram": impute_tangram,
    "gimvi": impute_gimvi,
}
ANNOTATE_RUNNERS: dict[str, Callable[..., np.ndarray]] = {
    "stai": annotate_stai,
    "knn": annotate_knn,
    "scanvi": annotate_scanvi,
    "tangram": annotate_tangram,
}


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GB; ``ru_maxrss`` is in KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def impute_fold(job: tuple) -> tuple[Any, float, dict[str, list]]:
    """Impute one fold of held-out genes: the output, its wall time and the recorded choices."""
    fn, query, reference, fold, cfg = job
    cfg = {**cfg, "_params": {}}
    held = query[:, ~query.var_names.isin(fold)].copy()
    t0 = time.perf_counter()
    out = fn(held, reference, fold, cfg)
    return out, time.perf_counter() - t0, cfg["_params"]


def run_worker(spec_path: str) -> None:
    """Child process: run one method on one setting and task, save its output and resources."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    spec = json.loads(Path(spec_path).read_text())
    cfg = spec["config"]
    torch.set_num_threads(cfg["threads"])
    cfg["_params"] = {}
    cfg["device"] = tangram_device()
    folder = Path(spec["dir"])
    prefix = "ann_" if spec["task"] == "annotate" else ""
    query = ad.read_h5ad(folder / f"{prefix}query.h5ad")
    reference = ad.read_h5ad(folder / f"{prefix}reference.h5ad")
    rss_loaded = peak_rss_gb()
    record: dict[str, Any] = {"rss_after_load_gb": rss_loaded}
    start = time.perf_counter()
    if spec["task"] == "impute":
        fn = IMPUTE_RUNNERS[spec["method"]]
        genes = spec["genes"]
        preds: dict[str, np.ndarray] = {}
        seconds = [np.nan] * len(genes)
        size = cfg["gene_fold_size"]
        folds = [genes[start : start + size] for start in range(0, len(genes), size)]
        jobs = [(fn, query, reference, fold, cfg) for fold in folds]
        if cfg["jobs"] > 1 and len(folds) > 1:  # folds in parallel, each in a forked process
            with multiprocessing.get_context("fork").Pool(min(cfg["jobs"], len(folds))) as pool:
                results = pool.map(impute_fold, jobs, chunksize=1)
        else:
            results = [impute_fold(job) for job in jobs]
        start_col = 0
        for fold, (out, took, params) in zip(folds, results, strict=True):
            cols = list(range(start_col, start_col + len(fold)))
            start_col += len(fold)
            for key, values in params.items():
                cfg["_params"].setdefault(key, []).extend(values)
            for j in cols:  # one fit per fold: its time is shared by the fold's genes
                seconds[j] = took / len(fold)
            for name, values in (out if isinstance(out, dict) else {spec["method"]: out}).items():
                values = np.asarray(values).reshape(query.n_obs, len(fold))
                preds.setdefault(name, np.full((query.n_obs, len(genes)), np.nan))[:, cols] = values
            print(f"{spec['method']} {fold}: {took:.1f} s", flush=True)
        record["fold_jobs"] = min(cfg["jobs"], len(folds))
        np.save(spec["out"], preds.pop(spec["method"]))
        for name, values in preds.items():  # variants of the same fit (e.g. not smoothed)
            np.save(spec["out"].replace(f"-{spec['method']}.npy", f"-{name}.npy"), values)
        record["variants"] = list(preds)
        record["seconds_per_gene"] = seconds
    else:
        labels = ANNOTATE_RUNNERS[spec["method"]](query, reference, cfg)
        np.save(spec["out"], np.asarray(labels, dtype=str))
    record["method_seconds"] = time.perf_counter() - start
    record["peak_rss_gb"] = max(
        peak_rss_gb(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    )
    record["params"] = cfg["_params"]
    Path(spec["out"] + ".json").write_text(json.dumps(record))


def method_config(args: argparse.Namespace) -> dict[str, Any]:
    """Settings the children need."""
    keys = [
        "seed",
        "scale",
        "reference_transform",
        "stai_calibrate",
        "stai_epochs",
        "stai_annotation_epochs",
        "stai_model_kwargs",
        "stai_train_kwargs",
        "gimvi_epochs",
        "gimvi_genes",
        "tangram_epochs",
        "scvi_epochs",
        "scanvi_epochs",
        "spage_npv",
        "spage_k",
        "knn_k",
        "reference_smoothing",
        "threads",
        "gene_fold_size",
        "jobs",
    ]
    return {k: getattr(args, k) for k in keys}


def run_child(
    args: argparse.Namespace, folder: Path, method: str, task: str, genes: list[str]
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Run one method in a fresh process; its output and a record (times, memory, error)."""
    tag = f"{task}-{method}"
    out = str(folder / f"{tag}.npy")
    spec = {
        "method": method,
        "task": task,
        "dir": str(folder),
        "genes": genes,
        "config": method_config(args),
        "out": out,
    }
    spec_path = folder / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec))
    log = folder / f"{tag}.log"
    threads = str(args.threads)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
    }
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--worker", str(spec_path)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            check=False,
            env=env,
        )
    record: dict[str, Any] = {"process_seconds": time.perf_counter() - start, "log": str(log)}
    if proc.returncode != 0 or not os.path.exists(out + ".json"):
        tail = [ln for ln in log.read_text().splitlines() if ln.strip()][-3:]
        record["error"] = f"exit {proc.returncode}: " + " | ".join(tail)
        return None, record
    record.update(json.loads(Path(out + ".json").read_text()))
    return np.load(out, allow_pickle=False), record


# --------------------------------------------------------------------------------------------
# scoring (parent process)
# --------------------------------------------------------------------------------------------


#: what held-out predictions are scored against (set from ``--truth`` in :func:`main`)
TRUTH = {"value": "counts"}


def score_imputation(setting: Setting, pred: np.ndarray, record: dict) -> pd.DataFrame:
    """Per-gene scores of one method (``heldout_gene_scores``) plus its seconds per gene."""
    from scfound.metrics import heldout_gene_scores

    if TRUTH["value"] == "log1p_cp10k":  # library over every gene the query measures
        truth = baselines.log_cp10k(setting.query, setting.genes)
    else:
        truth = baselines.counts_of(setting.query, setting.genes)
    scores = pd.DataFrame(heldout_gene_scores(truth, pred, gene_names=setting.genes))
    scores["seconds"] = record["seconds_per_gene"]
    return scores


def imputation_summary(
    per_gene: dict[str, pd.DataFrame], records: dict[str, dict] | None = None
) -> pd.DataFrame:
    """Median and mean over genes of each metric, time and memory, one row per method.

    Without ``records`` (the child processes' resources), the time is the median of the
    per-gene ``seconds`` column and memory is left out.
    """
    rows = []
    for method, df in per_gene.items():
        row: dict[str, Any] = {"method": NAMES[method], "genes": int(df["pcc"].notna().sum())}
        for metric in ("pcc", "scc", "rmse", "jsd"):
            if metric in df:
                row[f"median {metric.upper()}"] = df[metric].median()
                row[f"mean {metric.upper()}"] = df[metric].mean()
        if records is None:
            row["s/gene (median)"] = float(df["seconds"].median())
        else:
            rec = records[method]
            row["s/gene (median)"] = float(np.median(rec["seconds_per_gene"]))
            row["s total"] = rec["process_seconds"]
            row["peak RSS GB"] = rec["peak_rss_gb"]
            row["RSS after load GB"] = rec["rss_after_load_gb"]
        rows.append(row)
    return pd.DataFrame(rows)


def stai_tests(per_gene: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One-sided Mann-Whitney U of stAI vs each baseline over genes, and per-gene wins."""
    if "stai" not in per_gene:
        return pd.DataFrame()
    ours = per_gene["stai"]
    rows = []
    directions = {"pcc": "greater", "scc": "greater", "rmse": "less", "jsd": "less"}
    for method, df in per_gene.items():
        if method == "stai":
            continue
        row: dict[str, Any] = {"baseline": NAMES[method]}
        for metric, alternative in directions.items():
            if metric not in df or metric not in ours:
                continue
            a, b = ours[metric].dropna(), df[metric].dropna()
            p = mannwhitneyu(a, b, alternative=alternative).pvalue if len(a) and len(b) else np.nan
            sign = ">" if alternative == "greater" else "<"
            row[f"p {metric.upper()} (stAI {sign})"] = float(p)
        both = pd.concat([ours["pcc"], df["pcc"]], axis=1, keys=["ours", "base"]).dropna()
        row["stAI PCC higher on"] = f"{int((both['ours'] > both['base']).sum())}/{len(both)}"
        rows.append(row)
    return pd.DataFrame(rows)


def score_annotation(truth: np.ndarray, pred: np.ndarray) -> tuple[dict[str, float], pd.Series]:
    """Overall scores (``annotation_scores``) and the F1 of each class (``per_class_scores``)."""
    from scfound.metrics import annotation_scores, per_class_scores

    overall = {k: float(v) for k, v in annotation_scores(truth, pred).items()}
    return overall, per_class_scores(truth, pred)["f1"]


# --------------------------------------------------------------------------------------------
# running and reporting
# --------------------------------------------------------------------------------------------


def run_setting(args: argparse.Namespace, setting: Setting, folder: Path, out: dict) -> None:
    """Save the setting's data, run every method of every task, score, report as it goes."""
    folder.mkdir(parents=True, exist_ok=True)
    setting.query.write_h5ad(folder / "query.h5ad")
    setting.reference.write_h5ad(folder / "reference.h5ad")
    if setting.ann_truth is not None:
        setting.ann_query.write_h5ad(folder / "ann_query.h5ad")
        setting.ann_reference.write_h5ad(folder / "ann_reference.h5ad")
    res: dict[str, Any] = {
        "title": setting.title,
        "genes": setting.genes,
        "notes": setting.notes,
        "annotation_title": setting.ann_title,
        "per_gene": {},
        "impute_records": {},
        "annotation": {},
        "annotation_records": {},
        "per_class_f1": {},
        "errors": {},
    }
    out["settings"][setting.name] = res
    if "impute" in args.tasks:
        for method in [m for m in IMPUTERS if m in args.methods]:
            pred, record = run_child(args, folder, method, "impute", setting.genes)
            res["impute_records"][method] = record
            outputs = {method: pred}
            for variant in record.get("variants", []):  # same fit, same time and memory
                outputs[variant] = np.load(folder / f"impute-{variant}.npy", allow_pickle=False)
                res["impute_records"][variant] = record
            for name, values in outputs.items():
                if values is None:
                    res["errors"][f"impute {name}"] = record["error"]
                    continue
                try:
                    res["per_gene"][name] = score_imputation(setting, values, record)
                except Exception as err:  # scoring failure is reported, not fatal
                    res["errors"][f"impute {name}"] = f"scoring: {err!r}"
            log_progress(setting, "impute", method, record)
            write_outputs(args, out)
    if "annotate" in args.tasks and setting.ann_truth is not None:
        for method in [m for m in ANNOTATORS if m in args.methods]:
            pred, record = run_child(args, folder, method, "annotate", [])
            res["annotation_records"][method] = record
            if pred is None:
                res["errors"][f"annotate {method}"] = record["error"]
            else:
                try:
                    overall, per_class = score_annotation(setting.ann_truth, pred.astype(str))
                    res["annotation"][method] = overall
                    res["per_class_f1"][method] = per_class
                except Exception as err:
                    res["errors"][f"annotate {method}"] = f"scoring: {err!r}"
            log_progress(setting, "annotate", method, record)
            write_outputs(args, out)


def log_progress(setting: Setting, task: str, method: str, record: dict) -> None:
    """One line per finished method."""
    status = record.get("error", "ok")
    print(
        f"[{setting.name}] {task:<8} {NAMES[method]:<30} {record['process_seconds']:8.1f} s  "
        f"peak RSS {record.get('peak_rss_gb', float('nan')):.2f} GB  {status}",
        flush=True,
    )


def environment() -> str:
    """Versions and machine."""
    import scvi
    import torch

    try:
        from importlib.metadata import version

        tangram = version("tangram-sc")
    except Exception:
        tangram = "not installed"
    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, scvi-tools "
        f"{scvi.__version__}, tangram-sc {tangram}, scfound {getattr(sf, '__version__', '?')}; "
        f"{os.cpu_count()} CPU cores visible, {torch.get_num_threads()} torch threads, CUDA "
        f"{'available' if torch.cuda.is_available() else 'not available'} "
        f"({platform.platform()})."
    )


PROTOCOL = (
    "**Protocol.** Imputation is leave-genes-out over the shared genes: for each gene g (or "
    "fold of genes, `--gene-fold-size`) the spatial query loses g (`query[:, genes != g]`), "
    "each method imputes g from the reference (which measures it), and the prediction is scored "
    "against the held-out values (raw counts, or log1p-CP10k with `--truth`; see Methods) with "
    "`scfound.metrics.heldout_gene_scores` (per gene over cells: Pearson PCC, Spearman SCC, RMSE "
    "of per-gene z-scores, Jensen-Shannon divergence of the sum-normalised vectors). Output scale "
    "(`--scale`): with `log1p` (stAI's protocol) stAI and SpaGE-like give the reference's "
    "log1p-CP10k and gimVI its normalised expression; with `counts` all three give expected counts"
    " at each query cell's depth; Tangram gives projected raw counts either way. The metrics are "
    "insensitive to a per-gene scale but not to a per-cell one (the query's raw counts vary with "
    "cell size), so the scale changes the scores. Summaries are the median and the mean over "
    "genes; p-values are one-sided Mann-Whitney U tests over the per-gene scores "
    "(`scipy.stats.mannwhitneyu`, stAI greater for PCC/SCC, less for RMSE/JSD). Annotation trains "
    "on the reference's labels only and predicts every query cell "
    "(`scfound.metrics.annotation_scores`: accuracy, macro-F1, weighted-F1; per-class F1 from "
    "`per_class_scores`). Each method of each setting and task runs in a fresh child process: "
    "`s/gene` is the wall time of one gene's training and prediction, `s total` the child's whole "
    "wall time (imports and data loading included), `peak RSS` its peak resident memory "
    "(`ru_maxrss`), `RSS after load` the same before the method started (Python, libraries and "
    "data)."
)

THREADS_NOTE = (
    "Each child runs with {threads} CPU thread(s) (`OMP_NUM_THREADS`, `torch.set_num_threads`). "
    "On a 2-core machine shared with other jobs, 2 OpenMP threads made one gimVI epoch ~90x "
    "slower than 1 thread (spinning barriers), so times are comparable only between runs with "
    "the same thread count and machine load."
)


#: what ``--reference-transform`` z-scores, in words
REFERENCE_VALUES = {"cp10k_log1p": "log1p-CP10k", "scale": "raw counts", "log1p": "log1p counts"}


def method_settings(args: argparse.Namespace) -> str:
    """One paragraph with the settings of every method."""
    gimvi_genes = "shared genes + target" if args.gimvi_genes == "shared" else "all genes"
    tangram_note = (
        " (Tangram's default is 1000; fewer for CPU time, see the convergence line)"
        if args.tangram_epochs < 1000
        else ""
    )
    scvi_epochs = args.scvi_epochs or "scvi default"
    scanvi_epochs = args.scanvi_epochs or "scvi default"
    parts = [
        f"**Methods.** stAI: `sf.tl.impute(..., method='stai', max_epochs={args.stai_epochs})`, "
        f"`sf.tl.annotate(..., method='stai', max_epochs={args.stai_annotation_epochs})` "
        "(None: stAI's default length, about 1000 optimisation steps), "
        f"model kwargs {args.stai_model_kwargs or 'default'}, train kwargs "
        f"{args.stai_train_kwargs or 'default'}, "
        + (f"`scale='{args.scale}'`" if args.scale else "scale: its default")
        + (
            "; trained through the model API, with the imputation temperature picked by "
            "`STAI.calibrate_imputation` (candidates 0.125, 0.25, 0.5, 1; scored on each "
            "submodel's calibration genes, which the spatial data measures) before imputing."
            if args.stai_calibrate
            else " (a new fit picks its temperature and reference options itself; the choices "
            "are in the params line of its record)."
        ),
        f"Held-out genes per fit: {args.gene_fold_size} "
        "(each fit removes the fold's genes from the query and imputes them; every method "
        "sees the same folds). Scored against the held-out genes' "
        + (
            "log1p of counts per 1e4 (library over every query gene)."
            if args.truth == "log1p_cp10k"
            else "raw counts."
        ),
        "SpaGE-like: reference "
        f"{REFERENCE_VALUES[args.reference_transform or 'cp10k_log1p']} and query raw "
        "counts z-scored per gene, PCA "
        f"({args.spage_npv} components at most) fitted on the reference, {args.spage_k} nearest "
        "reference cells by cosine distance, SpaGE weights (1 - d / sum d over neighbours with "
        "d < 1, normalised), weighted mean of "
        + (
            "the reference's log1p-CP10k."
            if args.scale != "counts"
            else "the reference's CP10k, times the query cell's total over the shared genes "
            "divided by the reference's mean CP10k total over them (as stAI's "
            "`scale='counts'`)."
        ),
        (
            f"Reference smoothing (`--reference-smoothing {args.reference_smoothing}`): stAI "
            "(`reference_smoothing`) and the SpaGE-like kNN average each reference cell's "
            f"imputed values over its {args.reference_smoothing} nearest reference cells "
            "(`sf.pp.knn_smoothing_matrix`: log1p-CP10k of all reference genes, 2000 most "
            "variable, 50 PCs) before transferring them; the rows 'not smoothed' are the same "
            "fits without it (stAI's temperature calibrated again without it)."
            if args.reference_smoothing is not None
            else ""
        ),
        "Tangram: `tangram-sc` 1.0.4, `mode='cells'`, raw counts in both, "
        f"{args.tangram_epochs} epochs{tangram_note}, lr 0.1, rna_count_based density prior, "
        "training genes = shared minus the held-out gene.",
        f"gimVI: raw counts, scvi-tools defaults, {args.gimvi_epochs} epochs, seq data: "
        f"{gimvi_genes}, `get_imputed_values(normalized={args.scale != 'counts'})`.",
        f"kNN label transfer: majority of the {args.knn_k} nearest reference cells in the "
        "SpaGE-like PCA space (all shared genes).",
        "scANVI: the shared genes' raw counts, dataset as batch, scVI then "
        f"`SCANVI.from_scvi_model`, epochs {scvi_epochs} / {scanvi_epochs}.",
        "Tangram annotation: mapping on all shared genes, `project_cell_annotations`, argmax.",
        f"Seed {args.seed}.",
    ]
    return " ".join(p for p in parts if p)


def fmt_table(df: pd.DataFrame) -> str:
    """Markdown table with 4 significant digits for floats and ``-`` for missing values."""
    df = df.astype(object).where(df.notna(), None)
    return df.to_markdown(index=False, floatfmt=".4g", missingval="-")


def setting_section(res: dict[str, Any]) -> list[str]:
    """Markdown of one setting."""
    lines = [f"## {res['title']}", ""]
    lines += [f"- {note}" for note in res["notes"]] + [""]
    per_gene = res["per_gene"]
    if per_gene or any(k.startswith("impute") for k in res["errors"]):
        lines += [
            f"### Imputation, leave-one-gene-out over {len(res['genes'])} genes",
            "",
            f"Genes: {', '.join(res['genes'])}.",
            "",
        ]
        if per_gene:
            lines += [fmt_table(imputation_summary(per_gene, res["impute_records"])), ""]
            tangram = res["impute_records"].get("tangram", {}).get("params", {})
            if "train_cosine_final" in tangram:
                final = np.median(tangram["train_cosine_final"])
                half = np.median(tangram["train_cosine_half"])
                lines += [
                    "Tangram convergence: its training objective (mean cosine similarity of the "
                    f"training genes) is {final:.4f} at the last epoch and {half:.4f} at half "
                    "the epochs (medians over genes).",
                    "",
                ]
            stai = res["impute_records"].get("stai", {}).get("params", {})
            if "temperature" in stai:
                chosen = ", ".join(f"{t:g}" for t in stai["temperature"])
                lines += [
                    f"stAI temperatures picked by `calibrate_imputation` (one per fit): {chosen}"
                    + (
                        f"; mean calibration PCC per candidate: {stai['calibration_pcc']}."
                        if "calibration_pcc" in stai
                        else "; stAI's other recorded choices: "
                        + ", ".join(f"{k} {v}" for k, v in stai.items() if k != "temperature")
                        + "."
                    ),
                    "",
                ]
            tests = stai_tests(per_gene)
            if len(tests):
                lines += ["stAI against each baseline, over genes:", "", fmt_table(tests), ""]
            pcc = pd.DataFrame({NAMES[m]: df["pcc"] for m, df in per_gene.items()})
            lines += ["Per-gene PCC:", "", pcc.reset_index(names="gene").pipe(fmt_table), ""]
    if res["annotation"] or any(k.startswith("annotate") for k in res["errors"]):
        lines += [f"### Annotation: {res['annotation_title']}", ""]
        if res["annotation"]:
            rows = []
            for method, scores in res["annotation"].items():
                rec = res["annotation_records"][method]
                rows.append(
                    {
                        "method": NAMES[method],
                        **scores,
                        "s total": rec["process_seconds"],
                        "method s": rec["method_seconds"],
                        "peak RSS GB": rec["peak_rss_gb"],
                        "run": ", ".join(f"{k} {v}" for k, v in rec.get("params", {}).items()),
                    }
                )
            lines += [fmt_table(pd.DataFrame(rows)), ""]
            f1 = pd.DataFrame({NAMES[m]: s for m, s in res["per_class_f1"].items()})
            lines += ["Per-class F1:", "", f1.reset_index(names="cell type").pipe(fmt_table), ""]
    if res["errors"]:
        lines += ["### Failures", ""]
        lines += [f"- {key}: `{msg}`" for key, msg in res["errors"].items()] + [""]
    return lines


def plain(value: Any) -> Any:
    """JSON-friendly copy (DataFrames as records, Series as dicts)."""
    if isinstance(value, pd.DataFrame):
        if not isinstance(value.index, pd.RangeIndex):
            value = value.rename_axis(value.index.name or "gene").reset_index()
        return value.to_dict(orient="records")
    if isinstance(value, pd.Series):
        return value.to_dict()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def write_outputs(args: argparse.Namespace, out: dict[str, Any]) -> str:
    """Write ``reference_imputation.md`` and ``.json``; return the markdown."""
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Reference-based imputation and annotation benchmark (stAI protocol)",
        "",
        f"Command: `{out['command']}`  ",
        f"Date: {out['date']}  ",
        f"Environment: {out['environment']}",
        "",
        PROTOCOL,
        "",
        THREADS_NOTE.format(threads=args.threads)
        + (
            f" With `--jobs {args.jobs}`, up to {args.jobs} gene folds of a method are fitted at "
            "once in forked processes, so `s total` is the wall time of the parallel run and "
            "`s/gene` the fold's own wall time / its genes."
            if args.jobs > 1
            else ""
        ),
        "",
        method_settings(args),
        "",
    ]
    for res in out["settings"].values():
        lines += setting_section(res)
    text = "\n".join(lines)
    (folder / "reference_imputation.md").write_text(text)
    record = {k: plain(v) for k, v in out.items() if k != "settings"}
    record["settings"] = {}
    for name, res in out["settings"].items():
        entry = plain(res)
        if res["per_gene"]:
            entry["summary"] = plain(imputation_summary(res["per_gene"], res["impute_records"]))
            entry["tests_vs_stai"] = plain(stai_tests(res["per_gene"]))
        record["settings"][name] = entry
    (folder / "reference_imputation.json").write_text(json.dumps(record, indent=1, default=float))
    return text


def json_arg(text: str) -> dict[str, Any]:
    """A JSON object given on the command line."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument(
        "--tasks", nargs="+", choices=["impute", "annotate"], default=["impute", "annotate"]
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=list(METHODS),
        help="imputers: stai spage tangram gimvi; annotators: stai knn scanvi tangram",
    )
    parser.add_argument(
        "--genes", type=int, default=None, help="leave out only the first N shared genes"
    )
    parser.add_argument(
        "--gene-names", nargs="+", default=None, help="leave out these genes (overrides --genes)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--scale",
        choices=["log1p", "counts"],
        default=None,
        help="output scale of stAI, SpaGE-like and gimVI: log-normalised or expected counts at "
        "each spatial cell's depth (Tangram's output is counts either way); default: each "
        "method's own (log1p for all three)",
    )
    parser.add_argument(
        "--reference-transform",
        choices=["cp10k_log1p", "scale", "log1p"],
        default=None,
        help="reference values before the per-gene z-scores, for stAI (`reference_transform`) "
        "and the SpaGE-like / kNN joint PCA: log1p-CP10k, raw counts, or their log1p; "
        "default: each method's own (stAI: chosen from the reference's breadth; SpaGE-like / "
        "kNN: log1p-CP10k)",
    )
    parser.add_argument(
        "--truth",
        choices=["counts", "log1p_cp10k"],
        default="counts",
        help="what the held-out genes' predictions are scored against: their raw counts, or "
        "log1p of counts per 1e4 (library over every gene of the query)",
    )
    parser.add_argument(
        "--gene-fold-size",
        type=int,
        default=1,
        help="held-out genes per fit: each fit removes a fold of this many genes from the "
        "query and imputes them all (1: leave one gene out)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="gene folds fitted at once, each in its own process with --threads threads "
        "(e.g. 2 on a 2-core machine with --threads 1)",
    )
    parser.add_argument(
        "--stai-epochs",
        type=int,
        default=None,
        help="stAI imputation epochs (default: stAI's own, about 1000 optimisation steps)",
    )
    parser.add_argument(
        "--stai-annotation-epochs",
        type=int,
        default=None,
        help="stAI annotation epochs (default: stAI's own)",
    )
    parser.add_argument(
        "--stai-calibrate",
        action="store_true",
        help="pick stAI's imputation temperature with STAI.calibrate_imputation (measured genes "
        "only) instead of the paper's 1",
    )
    parser.add_argument("--stai-model-kwargs", type=json_arg, default=None, help="JSON object")
    parser.add_argument("--stai-train-kwargs", type=json_arg, default=None, help="JSON object")
    parser.add_argument("--gimvi-epochs", type=int, default=200)
    parser.add_argument(
        "--gimvi-genes",
        choices=["shared", "all"],
        default="shared",
        help="genes of gimVI's seq data: the shared genes (+ target) or all reference genes",
    )
    parser.add_argument(
        "--tangram-epochs", type=int, default=200, help="Tangram steps (its own default: 1000)"
    )
    parser.add_argument(
        "--scvi-epochs", type=int, default=None, help="scANVI's scVI stage (default: scvi's)"
    )
    parser.add_argument(
        "--scanvi-epochs", type=int, default=None, help="scANVI stage (default: scvi's)"
    )
    parser.add_argument(
        "--reference-smoothing",
        type=int,
        default=None,
        help="average the reference's imputed values over each reference cell's K nearest "
        "reference cells first (stAI's reference_smoothing; also the SpaGE-like kNN); the "
        "unsmoothed imputations of the same fits are reported too",
    )
    parser.add_argument("--spage-npv", type=int, default=30)
    parser.add_argument("--spage-k", type=int, default=50)
    parser.add_argument("--knn-k", type=int, default=15)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of each method's process (OMP/MKL/torch); 1 avoids the OpenMP "
        "oversubscription that slows scvi-tools ~100x on a busy 2-core machine",
    )
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument(
        "--workdir",
        default=None,
        help="data, child logs and outputs (default: a new temp dir)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    given = (args.stai_model_kwargs or {}).get("reference_smoothing", args.reference_smoothing)
    if given != args.reference_smoothing:
        parser.error("--stai-model-kwargs and --reference-smoothing disagree; give one of them.")
    if args.reference_smoothing is not None:
        args.stai_model_kwargs = (args.stai_model_kwargs or {}) | {
            "reference_smoothing": args.reference_smoothing
        }
    given = (args.stai_model_kwargs or {}).get("reference_transform", args.reference_transform)
    if args.reference_transform is not None and given != args.reference_transform:
        parser.error("--stai-model-kwargs and --reference-transform disagree; give one of them.")
    if args.reference_transform is not None:
        args.stai_model_kwargs = (args.stai_model_kwargs or {}) | {
            "reference_transform": args.reference_transform
        }
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the selected settings, tasks and methods; write the report."""
    args = parse_args(argv)
    TRUTH["value"] = args.truth
    if args.worker:
        run_worker(args.worker)
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="reference_imputation-"))
    print(f"work directory (data, child logs): {workdir}", flush=True)
    out: dict[str, Any] = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "environment": environment(),
        "config": {k: v for k, v in vars(args).items() if k != "worker"},
        "settings": {},
    }
    for name in args.settings:
        setting = SETTINGS[name](args)
        run_setting(args, setting, workdir / f"setting_{name}", out)
    print()
    print(write_outputs(args, out))


if __name__ == "__main__":
    main()
