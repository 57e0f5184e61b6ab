"""ExpressionTransformer benchmark (issue 24): gene-gene interaction, imputation and speed.

One run, for each seed of ``--seeds``:

* **Corpus.** The RNA of ``pbmc10k_cite.h5mu``, ``pbmc5k_rna.h5ad``, ``reapseq_pbmc_s4.h5mu``
  and ``bmmc_cite_starter.h5mu`` (raw counts, gene symbols), at most ``--cells-per-dataset``
  random cells each, joined on the union of their genes by :func:`scfound.pp.build_corpus`.
  ``--heldout-cells`` random PBMC 10k cells are kept out of it for the imputation task.
* **Pre-training** on the corpus: the ExpressionTransformer (``"small"`` preset), its "w/o
  Decoder" ablation (``decoder="encoder"``) and a CellPLM of the same width (``n_hidden`` 64;
  its gene embeddings are its input gene table, ``CellPLM.get_gene_embeddings()``).
* **GGI** (the Gene2vec benchmark of the thesis, labels from shared GO annotations; no GO
  input feeds any embedding): :func:`scfound.metrics.gene_pair_auc` (gradient boosting on
  concatenated pair embeddings) on the valid split and on a gene-disjoint split of the
  training pairs, for the ExpressionTransformer, w/o Decoder, co-expression (gene loadings of
  a PCA of the log-normalised corpus, same dimension), random embeddings, CellPLM, and the
  ExpressionTransformer's own gene table before pre-training (a control). Only
  pairs whose two genes are in the corpus vocabulary are used (coverage reported); at most
  ``--max-train-pairs`` random training pairs (the same for every embedding) to bound the cost
  of the classifier.
* **Imputation** of held-out cells: 15 % of their non-zeros dropped
  (:func:`scfound.pp.draw_holdout_mask` on the non-zero entries); MAE and Pearson at the dropped
  entries on one scale, ``log1p(1e4 * count / library)`` with ``library`` the cell's total over
  its *observed* counts (what every method sees); the truth is the original count on that scale.
  Methods: ExpressionTransformer and w/o Decoder zero-shot (the thesis's protocol: the dropped
  genes join the cell's tokens as masked genes), optionally fine-tuned (``--finetune-epochs``);
  MAGIC (``magic-impute``), scVI (trained on the corpus' PBMC 10k cells and the held-out cells
  with their drops; ``get_normalized_expression`` scaled to the cell's library), kNN smoothing
  (mean of the 15 nearest other cells in a 50-PC space), CellPLM denoising, and the cell's mean
  observed value. The transformer (and the cell mean) is told *which* entries were dropped and
  predicts their value given that they are expressed; the other methods predict an expected
  value that includes the chance of a zero.
* **Speed** (``speed`` part, once): tokens/s and peak memory of pre-training steps of the small
  preset over ``--speed-cells`` PBMC 5k cells (32 cells a step at most), with steps of
  length-bucketed cells (the model's default), of mixed lengths padded to the longest cell
  (``length_buckets=False``) and padded to 1,100 tokens (the thesis; emulated by padding the
  tokenised batch), each in a fresh process; with several ``--speed-cells`` sizes, the bucketed
  steps again at each further size (scaling with the number of cells).

``magic-impute`` pins ``pandas<2.1`` through ``scprep`` while anndata needs ``pandas>=2.1``, so it
cannot be an extra of the package; install it with
``pip install --no-deps magic-impute graphtools scprep tasklogger pygsp future decorator``
(it runs with pandas 2.3). Without it the MAGIC row is skipped.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/exprformer.py --seeds 0 1  # writes results/exprformer.*
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import anndata as ad
import mudata
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

import scfound as sf
from scfound.metrics import normalize_log1p

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _baselines import _neighbor_mean, _neighbors, _pca, scvi_impute

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data")
PAIRS = os.path.join(DATA, "gene_pairs")
#: library size of the log-normalisation (the thesis's 1e4)
TARGET_SUM = 1e4
#: CPU-sized CellPLM at the ExpressionTransformer's width
CELLPLM_SMALL = {
    "n_hidden": 64,
    "n_layers": 2,
    "n_heads": 4,
    "n_latent": 32,
    "n_decoder_hidden": 128,
    "likelihood": "mse",
}


# ------------------------------------------------------------------------------------ data
def _rna(path: str, modality: str | None) -> ad.AnnData:
    """Raw RNA counts (CSR, float32) of a shared file, gene symbols as ``var_names``."""
    full = os.path.join(DATA, path)
    adata = mudata.read_h5mu(full)[modality] if modality else ad.read_h5ad(full)
    counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
    out = ad.AnnData(
        sp.csr_matrix(counts, dtype=np.float32),
        obs=pd.DataFrame(index=adata.obs_names.astype(str)),
        var=pd.DataFrame(index=adata.var_names.astype(str)),
    )
    out.var_names_make_unique()
    return out[np.diff(out.X.indptr) > 0].copy()


def load_datasets() -> dict[str, ad.AnnData]:
    """The four human RNA datasets of the corpus."""
    return {
        "pbmc10k": _rna("pbmc10k_cite.h5mu", "rna"),
        "pbmc5k": _rna("pbmc5k_rna.h5ad", None),
        "reapseq": _rna("reapseq_pbmc_s4.h5mu", "rna"),
        "bmmc": _rna("bmmc_cite_starter.h5mu", "rna"),
    }


def build(datasets: dict[str, ad.AnnData], args, seed: int) -> tuple[ad.AnnData, ad.AnnData]:
    """Corpus (subsampled datasets, held-out PBMC 10k cells removed) and the held-out cells."""
    rng = np.random.default_rng(seed)
    pbmc = datasets["pbmc10k"]
    order = rng.permutation(pbmc.n_obs)
    held = pbmc[np.sort(order[: args.heldout_cells])].copy()
    parts = {"pbmc10k": pbmc[np.sort(order[args.heldout_cells :])]}
    parts.update({k: v for k, v in datasets.items() if k != "pbmc10k"})
    sampled = {}
    for name, adata in parts.items():
        n = min(args.cells_per_dataset, adata.n_obs)
        sampled[name] = adata[np.sort(rng.choice(adata.n_obs, n, replace=False))].copy()
    return sf.pp.build_corpus(sampled), held


# ---------------------------------------------------------------------------- pre-training
def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    """Run ``fn``; return its result and wall time in seconds."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def pretrain_exprformer(corpus: ad.AnnData, decoder: str, args, seed: int) -> tuple:
    """An ExpressionTransformer (small preset) pre-trained on the corpus; model and seconds.

    The gene table before training is kept as ``model.initial_table_`` (a control: what the
    classifier reads from a table that pre-training did not move).
    """
    torch.manual_seed(seed)
    model = sf.ExpressionTransformer(corpus, preset="small", decoder=decoder, batch_size=64)
    model.initial_table_ = model.get_gene_embeddings().copy()
    _, seconds = timed(
        model.train,
        max_epochs=args.epochs,
        lr=args.lr,
        train_size=0.95,
        seed=seed,
        enable_progress_bar=False,
    )
    return model, seconds


def pretrain_cellplm(corpus: ad.AnnData, args, seed: int) -> tuple:
    """A small CellPLM pre-trained on the same corpus (one group per dataset)."""
    torch.manual_seed(seed)
    model = sf.CellPLM(corpus, **CELLPLM_SMALL, max_cells=args.cellplm_max_cells)
    _, seconds = timed(
        model.train,
        max_epochs=args.cellplm_epochs,
        lr=1e-3,
        train_size=1.0,
        seed=seed,
        enable_progress_bar=False,
    )
    return model, seconds


def table_change(model: sf.ExpressionTransformer) -> float:
    """RMS change of the gene table in pre-training over the RMS of its initial values."""
    before = model.initial_table_.to_numpy()
    after = model.get_gene_embeddings().to_numpy()
    return float(np.sqrt(np.mean((after - before) ** 2) / np.mean(before**2)))


def last(history: dict, key: str) -> float:
    """Last logged value of a training curve (NaN when absent)."""
    if key not in history:
        return float("nan")
    return float(np.asarray(history[key], dtype=float).ravel()[-1])


# -------------------------------------------------------------------------------------- GGI
def coexpression_embedding(corpus: ad.AnnData, dim: int, seed: int) -> pd.DataFrame:
    """Gene loadings of a PCA of the log-normalised corpus (genes x ``dim``)."""
    from sklearn.decomposition import PCA

    logn = normalize_log1p(corpus.X, TARGET_SUM).astype(np.float32)
    pca = PCA(n_components=dim, random_state=seed).fit(logn)
    return pd.DataFrame(pca.components_.T, index=corpus.var_names.copy())


def ggi_task(embeddings: dict[str, pd.DataFrame], corpus: ad.AnnData, args, seed: int) -> tuple:
    """AUC of every embedding on the valid split and a gene-disjoint split; coverage."""
    vocabulary = corpus.var_names
    train = pd.read_csv(os.path.join(PAIRS, "gene2vec_ggi_train.tsv"), sep="\t")
    valid = pd.read_csv(os.path.join(PAIRS, "gene2vec_ggi_valid.tsv"), sep="\t")
    known = set(vocabulary.astype(str))
    expressed = set(vocabulary[np.asarray((corpus.X > 0).sum(0)).ravel() > 0].astype(str))

    def covered(pairs: pd.DataFrame) -> pd.DataFrame:
        keep = pairs["gene1"].astype(str).isin(known) & pairs["gene2"].astype(str).isin(known)
        return pairs.loc[keep].reset_index(drop=True)

    train_c, valid_c = covered(train), covered(valid)
    coverage = {
        "vocabulary genes": len(vocabulary),
        "train pairs covered": f"{len(train_c)} of {len(train)} ({len(train_c) / len(train):.1%})",
        "valid pairs covered": f"{len(valid_c)} of {len(valid)} ({len(valid_c) / len(valid):.1%})",
        "valid pairs with both genes non-zero in some corpus cell": int(
            (valid_c["gene1"].isin(expressed) & valid_c["gene2"].isin(expressed)).sum()
        ),
    }
    rng = np.random.default_rng(seed)
    n_fit = min(args.max_train_pairs, len(train_c))
    fit = train_c.iloc[np.sort(rng.choice(len(train_c), n_fit, replace=False))]
    # a gene-disjoint split keeps ~64 % of the pairs for training: draw more so it fits about
    # as many pairs as the valid split
    n_disjoint = min(round(args.max_train_pairs / 0.64), len(train_c))
    disjoint = train_c.iloc[np.sort(rng.choice(len(train_c), n_disjoint, replace=False))]
    rows = []
    for name, emb in embeddings.items():
        emb = emb.reindex(vocabulary)
        res, t1 = timed(sf.metrics.gene_pair_auc, emb, fit, test_pairs=valid_c, seed=seed)
        dis, t2 = timed(sf.metrics.gene_pair_auc, emb, disjoint, split="gene_disjoint", seed=seed)
        rows.append(
            {
                "embedding": name,
                "dim": emb.shape[1],
                "AUC valid": res["auc"],
                "AUC gene-disjoint": dis["auc"],
                "pairs train/test (valid)": f"{res['n_train']}/{res['n_test']}",
                "pairs train/test (disjoint)": f"{dis['n_train']}/{dis['n_test']}",
                "s": t1 + t2,
            }
        )
        print(rows[-1], flush=True)
    return pd.DataFrame(rows), coverage


# ------------------------------------------------------------------------------- imputation
def log_scale(counts: np.ndarray, library: np.ndarray) -> np.ndarray:
    """``log1p(1e4 * counts / library)`` with a given library per cell."""
    return np.log1p(counts / library[:, None] * TARGET_SUM)


def magic_impute(logn: np.ndarray, seed: int) -> np.ndarray | None:
    """MAGIC (default settings) on log-normalised values; ``None`` when not installed."""
    try:
        import magic
    except ImportError:
        return None
    op = magic.MAGIC(random_state=seed, verbose=0, n_jobs=1)
    return np.asarray(op.fit_transform(logn), dtype=np.float64)


def knn_smooth(logn: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Mean of the ``k`` nearest other cells in a 50-PC space of the log-normalised values."""
    idx, dist = _neighbors(_pca(logn, 50, seed), k)
    return _neighbor_mean(logn, idx, dist, k, "uniform")


def imputation_task(
    held: ad.AnnData, corpus: ad.AnnData, models: dict[str, Any], args, seed: int
) -> pd.DataFrame:
    """Drop 15 % of the held-out cells' non-zeros; score each method at the dropped entries."""
    X = held.X.toarray().astype(np.float64)
    mask = sf.pp.draw_holdout_mask(X, args.drop_rate, seed, eligible=X > 0)
    observed = np.where(mask, 0.0, X)
    library = observed.sum(1)
    truth = log_scale(X, library)[mask]
    noisy = ad.AnnData(
        sp.csr_matrix(observed.astype(np.float32)),
        var=pd.DataFrame(index=held.var_names.copy()),
        obs=pd.DataFrame(index=held.obs_names.copy()),
    )
    rows: list[dict] = []

    def score(name: str, pred: np.ndarray, seconds: float) -> None:
        p = np.asarray(pred, dtype=np.float64)[mask]
        if not np.isfinite(p).all():
            raise ValueError(f"{name}: {int((~np.isfinite(p)).sum())} non-finite predictions")
        rows.append(
            {
                "method": name,
                "MAE": float(np.mean(np.abs(p - truth))),
                "Pearson": float(np.corrcoef(p, truth)[0, 1]),
                "s": seconds,
            }
        )
        print(rows[-1], flush=True)

    query = sp.csr_matrix(mask)
    sf.ExpressionTransformer.setup_anndata(noisy, layer=None)
    for label, pre in (("ExpressionTransformer", models["et"]), ("w/o Decoder", models["nodec"])):
        zs = sf.ExpressionTransformer.from_model(pre, noisy)
        pred, t = timed(zs.get_denoised_expression, noisy, query=query)
        score(f"{label} zero-shot", pred, t)
        if args.finetune_epochs:
            torch.manual_seed(seed)
            ft = sf.ExpressionTransformer.from_model(pre, noisy)
            _, t_ft = timed(
                ft.train,
                max_epochs=args.finetune_epochs,
                lr=args.lr,
                train_size=1.0,
                seed=seed,
                enable_progress_bar=False,
            )
            pred, t = timed(ft.get_denoised_expression, noisy, query=query)
            score(f"{label} fine-tuned ({args.finetune_epochs} epochs)", pred, t + t_ft)

    logn = log_scale(observed, library)
    start = time.perf_counter()
    cell_mean = np.array([row[row > 0].mean() for row in logn])
    pred = np.repeat(cell_mean[:, None], X.shape[1], 1)
    score("cell mean of observed values", pred, time.perf_counter() - start)

    # baselines fitted on the corpus' PBMC 10k cells plus the held-out cells with their drops
    pbmc = corpus[corpus.obs["dataset"] == "pbmc10k", held.var_names].X.toarray()
    pool = np.vstack([pbmc.astype(np.float64), observed])
    rows_held = slice(len(pbmc), len(pool))
    pool_logn = log_scale(pool, pool.sum(1))
    pred, t = timed(magic_impute, pool_logn, seed)
    if pred is None:
        rows.append({"method": "MAGIC", "MAE": np.nan, "Pearson": np.nan, "s": np.nan})
    else:
        score("MAGIC (log1p CP10k input)", pred[rows_held], t)
    pred, t = timed(
        scvi_impute,
        pool,
        seed=seed,
        max_epochs=args.scvi_epochs,
        train_kwargs={"enable_progress_bar": False},
    )
    score("scVI (normalised expression x library)", log_scale(pred[rows_held], library), t)
    pred, t = timed(knn_smooth, pool_logn, 15, seed)
    score("kNN smoothing (15 cells, 50 PCs)", pred[rows_held], t)

    cp = noisy.copy()
    sf.CellPLM.setup_anndata(cp)
    zs = sf.CellPLM.from_model(models["cellplm"], cp, drop_unknown_genes=True)
    pred, t = timed(zs.get_denoised_expression, cp, scale="log1p")
    score("CellPLM denoising zero-shot", pred, t)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------ speed
SPEED_DATA = {"pbmc5k": ("pbmc5k_rna.h5ad", None), "pbmc10k": ("pbmc10k_cite.h5mu", "rna")}


def speed_worker(
    mode: str,
    n_cells: int,
    n_steps: int,
    batch_size: int,
    seed: int,
    device: str = "cpu",
    precision: str = "32",
    data: str = "pbmc5k",
) -> dict:
    """``n_steps`` passes of training steps over ``n_cells`` cells in one batching ``mode``.

    Every mode sees the same cells and tokens; returns tokens/s and peak memory (resident memory
    of the process on a CPU, allocated device memory on a GPU). One untimed step first (CUDA
    start-up, kernel selection). ``precision="bf16"``: the forward pass under
    ``torch.autocast(dtype=torch.bfloat16)``.
    """
    import psutil

    torch.manual_seed(seed)
    adata = _rna(*SPEED_DATA[data])
    rng = np.random.default_rng(seed)
    adata = adata[np.sort(rng.choice(adata.n_obs, n_cells, replace=False))].copy()
    sf.ExpressionTransformer.setup_anndata(adata, layer=None)
    model = sf.ExpressionTransformer(
        adata, preset="small", batch_size=batch_size, length_buckets=mode == "bucketed"
    )
    module = model.module.train().to(device)
    X = torch.from_numpy(adata.X.toarray()).to(device)
    cuda = torch.device(device).type == "cuda"
    autocast = torch.autocast(
        torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"
    )
    if mode == "bucketed":
        codes = model._group_codes()
        batches = [
            chunk
            for code in np.unique(codes)
            for chunk in np.array_split(
                rng.permutation(np.flatnonzero(codes == code)),
                -(-int((codes == code).sum()) // batch_size),
            )
        ]
        rng.shuffle(batches)
    else:
        perm = rng.permutation(n_cells)
        batches = [perm[i : i + batch_size] for i in range(0, n_cells, batch_size)]
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    process = psutil.Process()
    base = process.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.005)

    def step(index: np.ndarray) -> tuple[int, int]:
        batch = module.tokenize(X[torch.as_tensor(index, device=X.device)], mask=True)
        if mode == "padded_1100":
            pad = module.max_tokens - batch["tokens"].shape[1]
            for key in ("tokens", "bins", "valid", "masked", "values"):
                batch[key] = torch.nn.functional.pad(batch[key], (0, pad))
        with autocast:
            h = module.encode(batch["tokens"], batch["valid"])
            pred = module.generative(
                h, batch["bins"], batch["valid"], batch["masked"], batch["cell_max"]
            )["prediction"]
        loss = ((pred.float() - batch["values"]) ** 2)[batch["masked"]].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return int(batch["valid"].sum()), batch["valid"].numel()

    step(batches[0])  # untimed
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_device = torch.cuda.memory_allocated()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    tokens = positions = 0
    start = time.perf_counter()
    for i in range(n_steps * len(batches)):
        n_tokens, n_positions = step(batches[i % len(batches)])
        tokens += n_tokens
        positions += n_positions
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    stop.set()
    thread.join()
    if cuda:
        peak_mb = (torch.cuda.max_memory_allocated() - base_device) / 2**20
    else:
        peak_mb = (peak[0] - base) / 2**20
    return {
        "device": device if precision == "32" else f"{device} ({precision})",
        "batching": mode,
        "steps": n_steps * len(batches),
        "mean cells/step": n_cells / len(batches),
        "tokens/s": tokens / seconds,
        "padding (% of positions)": 100 * (1 - tokens / positions),
        "peak memory above start (MB)": peak_mb,
        "s": seconds,
    }


def speed_task(args) -> pd.DataFrame:
    """Each batching mode in a fresh process (so that peak memory is its own).

    Every mode at the first ``--speed-cells`` size; the model's default (bucketed) alone at the
    further sizes, for the scaling with the number of cells.
    """
    rows = []
    runs = [(args.speed_cells[0], mode) for mode in ("bucketed", "mixed", "padded_1100")]
    runs += [(n_cells, "bucketed") for n_cells in args.speed_cells[1:]]
    for n_cells, mode in runs:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--speed-worker",
            mode,
            "--speed-cells",
            str(n_cells),
            "--speed-passes",
            str(args.speed_passes),
            "--seeds",
            str(args.seeds[0]),
            "--speed-device",
            args.speed_device,
            "--speed-precision",
            args.speed_precision,
            "--speed-data",
            args.speed_data,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append({"cells": n_cells, **json.loads(out.stdout.strip().splitlines()[-1])})
        print(rows[-1], flush=True)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------- main
def run_seed(datasets: dict[str, ad.AnnData], args, seed: int) -> dict:
    """Corpus, pre-training, GGI and imputation for one seed."""
    corpus, held = build(datasets, args, seed)
    sizes = corpus.obs["dataset"].value_counts().to_dict()
    n_tokens = np.diff(corpus.X.indptr)
    info: dict[str, Any] = {
        "corpus": f"{corpus.n_obs} cells x {corpus.n_vars} genes (union); cells per dataset "
        f"{ {k: int(v) for k, v in sizes.items()} }; non-zero genes per cell median "
        f"{int(np.median(n_tokens))}, max {int(n_tokens.max())}; held-out PBMC 10k cells "
        f"{held.n_obs}",
    }
    sf.ExpressionTransformer.setup_anndata(corpus, layer=None)
    models: dict[str, Any] = {}
    pre_rows = []
    for key, label, decoder in (
        ("et", "ExpressionTransformer", "cross_attention"),
        ("nodec", "w/o Decoder", "encoder"),
    ):
        model, t = pretrain_exprformer(corpus, decoder, args, seed)
        models[key] = model
        h = model.history
        pre_rows.append(
            {
                "model": label,
                "epochs": args.epochs,
                "train loss": last(h, "masked_mse_train"),
                "validation loss": last(h, "masked_mse_validation"),
                "gene table change": table_change(model),
                "s": t,
                "tokens/s": float(np.minimum(n_tokens, 1100).sum()) * args.epochs / t,
            }
        )
        print(pre_rows[-1], flush=True)
    sf.CellPLM.setup_anndata(corpus, group_key="sample", dataset_key="dataset")
    cellplm, t = pretrain_cellplm(corpus, args, seed)
    models["cellplm"] = cellplm
    pre_rows.append(
        {
            "model": "CellPLM",
            "epochs": args.cellplm_epochs,
            "train loss": last(cellplm.history, "reconstruction_loss_train"),
            "validation loss": float("nan"),
            "gene table change": float("nan"),
            "s": t,
            "tokens/s": float("nan"),
        }
    )
    info["pretraining"] = pd.DataFrame(pre_rows)

    vocabulary = pd.Index(models["et"].vocabulary)
    dim = models["et"].get_gene_embeddings().shape[1]
    rng = np.random.default_rng(seed)
    embeddings = {
        "ExpressionTransformer": models["et"].get_gene_embeddings(),
        "w/o Decoder": models["nodec"].get_gene_embeddings(),
        "ExpressionTransformer initial table (untrained)": models["et"].initial_table_,
        f"co-expression (PCA loadings, {dim} PCs)": coexpression_embedding(corpus, dim, seed),
        "random": pd.DataFrame(rng.standard_normal((len(vocabulary), dim)), index=vocabulary),
        "CellPLM (input gene table)": cellplm.get_gene_embeddings(),
    }
    if "ggi" in args.parts:
        info["ggi"], info["coverage"] = ggi_task(embeddings, corpus, args, seed)
    if "imputation" in args.parts:
        info["imputation"] = imputation_task(held, corpus, models, args, seed)
    return info


def summarise(per_seed: dict[int, dict], key: str, by: str, cols: list[str]) -> pd.DataFrame:
    """Mean and standard deviation over seeds of ``cols`` of a per-seed table."""
    frames = [info[key].assign(seed=s) for s, info in per_seed.items() if key in info]
    table = pd.concat(frames)
    agg = table.groupby(by, sort=False)[cols].agg(["mean", "std"])
    out = pd.DataFrame(index=agg.index)
    for col in cols:
        out[col] = [
            f"{m:.3f}" + ("" if np.isnan(s) else f" ± {s:.3f}")
            for m, s in zip(agg[(col, "mean")], agg[(col, "std")], strict=True)
        ]
    return out.reset_index()


def write(per_seed: dict[int, dict], speed: pd.DataFrame | None, args, seconds: float) -> None:
    """Markdown and JSON reports."""
    command = "OMP_NUM_THREADS=1 python " + " ".join(sys.argv)
    lines = [
        "# ExpressionTransformer benchmark (issue 24)",
        "",
        f"Command: `{command}`",
        "",
        f"Seeds {args.seeds}; total wall time {seconds / 60:.1f} min on "
        f"{torch.get_num_threads()} CPU thread(s)."
        + (
            f" Pre-training: {args.epochs} epochs at a step size of {args.lr:g}, small preset, "
            f"64 cells per step; CellPLM {args.cellplm_epochs} epochs."
            if per_seed
            else ""
        )
        + " See the docstring of benchmarks/exprformer.py for the protocol.",
        "",
    ]
    first = per_seed.get(args.seeds[0], {})
    if per_seed:
        lines += ["## Corpus", ""]
        lines += [f"- seed {s}: {info['corpus']}" for s, info in per_seed.items()]
        if "coverage" in first:
            lines += [f"- GGI coverage: {first['coverage']}"]
        lines += [
            "",
            "## Pre-training (per seed)",
            "",
            "Loss: masked MSE of log-normalised values (ExpressionTransformer, w/o Decoder; "
            "validation on 5 % of the corpus cells), reconstruction loss (CellPLM). Gene table "
            "change: RMS change of the gene-token table over the RMS of its initial values.",
            "",
        ]
    for s, info in per_seed.items():
        table = info["pretraining"].to_markdown(index=False, floatfmt=".3f")
        lines += [f"Seed {s}:", "", table, ""]

    def section(key: str, title: str, note: str, by: str, cols: list[str]) -> list[str]:
        """A task's mean ± std over seeds, then its table per seed."""
        mean = summarise(per_seed, key, by, cols).to_markdown(index=False)
        out = [f"## {title}", "", note, "", mean, ""]
        for s, info in per_seed.items():
            out += [f"Seed {s}:", "", info[key].to_markdown(index=False, floatfmt=".3f"), ""]
        return out

    if "ggi" in first:
        lines += section(
            "ggi",
            "Gene-gene interaction (Gene2vec pairs, gradient boosting, ROC AUC)",
            f"Mean ± standard deviation over seeds {args.seeds}; at most {args.max_train_pairs} "
            "training pairs.",
            "embedding",
            ["AUC valid", "AUC gene-disjoint"],
        )
    if "imputation" in first:
        lines += section(
            "imputation",
            f"Imputation ({args.drop_rate:.0%} of the held-out cells' non-zeros dropped)",
            "Scale: log1p(1e4 x count / observed library). Mean ± standard deviation over seeds "
            "(each seed its own held-out cells and drops).",
            "method",
            ["MAE", "Pearson"],
        )
    if speed is not None:
        lines += [
            f"## Speed ({args.speed_data} cells, small preset, "
            f"{args.speed_device}, 1 process each)",
            "",
            speed.to_markdown(index=False, floatfmt=".1f"),
            "",
            "Peak memory: resident memory above the start of the loop (CPU), sampled every 5 ms; "
            "on a GPU, allocated device memory above the start of the loop.",
            "",
        ]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    payload: dict[str, Any] = {"command": command, "seconds": seconds, "seeds": {}}
    for s, info in per_seed.items():
        payload["seeds"][str(s)] = {
            k: v.to_dict(orient="records") if isinstance(v, pd.DataFrame) else v
            for k, v in info.items()
        }
    if speed is not None:
        payload["speed"] = speed.to_dict(orient="records")
    with open(args.out + ".json", "w") as fh:
        json.dump(payload, fh, indent=1, default=float)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run the benchmark (or one speed worker)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--cells-per-dataset", type=int, default=1000)
    p.add_argument("--heldout-cells", type=int, default=500)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--cellplm-epochs", type=int, default=50)
    p.add_argument("--cellplm-max-cells", type=int, default=512)
    p.add_argument("--max-train-pairs", type=int, default=5000)
    p.add_argument("--drop-rate", type=float, default=0.15)
    p.add_argument("--scvi-epochs", type=int, default=100)
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument(
        "--speed-cells",
        type=int,
        nargs="+",
        default=[256],
        help="cells of the speed runs: every batching mode at the first size, bucketed at the rest",
    )
    p.add_argument("--speed-passes", type=int, default=1)
    p.add_argument("--speed-device", default="cpu", help="torch device of the speed part")
    p.add_argument("--speed-precision", choices=["32", "bf16"], default="32")
    p.add_argument("--speed-data", choices=list(SPEED_DATA), default="pbmc5k")
    p.add_argument("--speed-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--parts",
        nargs="+",
        default=["ggi", "imputation", "speed"],
        choices=["ggi", "imputation", "speed"],
    )
    p.add_argument("--out", default=os.path.join(HERE, "results", "exprformer"))
    args = p.parse_args(argv)
    if args.speed_worker:
        result = speed_worker(
            args.speed_worker,
            args.speed_cells[0],
            args.speed_passes,
            32,
            args.seeds[0],
            device=args.speed_device,
            precision=args.speed_precision,
            data=args.speed_data,
        )
        print(json.dumps(result))
        return
    sf.settings.progress_bar = False
    start = time.perf_counter()
    per_seed = {}
    if {"ggi", "imputation"} & set(args.parts):  # the speed part alone needs no pre-training
        datasets = load_datasets()
        per_seed = {seed: run_seed(datasets, args, seed) for seed in args.seeds}
    speed = speed_task(args) if "speed" in args.parts else None
    write(per_seed, speed, args, time.perf_counter() - start)


if __name__ == "__main__":
    main()
