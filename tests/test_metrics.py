import math

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import pearsonr, spearmanr

from scfound.metrics import _imputation as imputation_module
from scfound.metrics import (
    clustering_scores,
    imputation_scores,
    normalize_log1p,
    per_gene_scores,
)


@pytest.fixture
def counts():
    rng = np.random.default_rng(0)
    truth = rng.poisson(rng.gamma(2.0, 2.0, size=(120, 30))).astype(np.float32)
    truth[0] = 0  # an empty cell
    noisy = rng.poisson(truth + 1.0).astype(np.float32)
    mask = rng.random(truth.shape) < 0.3
    return truth, noisy, mask


# ---------------------------------------------------------------- normalize_log1p


def test_normalize_log1p():
    X = np.array([[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]])
    out = normalize_log1p(X, 4.0)
    expected = np.log1p([[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]])
    np.testing.assert_allclose(out, expected)
    assert out.dtype == np.float64
    np.testing.assert_allclose(normalize_log1p(sp.csr_matrix(X * 10), 4.0), expected)
    with pytest.raises(ValueError, match="target_sum"):
        normalize_log1p(X, 0.0)


# ---------------------------------------------------------------- imputation_scores


def test_perfect_prediction(counts):
    truth, _, mask = counts
    scores = imputation_scores(truth, truth, mask)
    assert set(scores) == {"rmse", "pearson", "cosine"}
    assert scores["rmse"] == pytest.approx(0.0, abs=1e-12)
    assert scores["pearson"] == pytest.approx(1.0)
    assert scores["cosine"] == pytest.approx(1.0)


def test_hand_computed_example():
    truth = np.array([[1.0, 3.0], [2.0, 2.0]])
    imputed = np.array([[2.0, 2.0], [1.0, 3.0]])
    mask = np.array([[True, True], [False, True]])
    # totals are 4 everywhere, so with target_sum=4 the values are log1p of the counts
    t = [math.log(2), math.log(4), math.log(3)]
    p = [math.log(3), math.log(3), math.log(4)]
    rmse = math.sqrt(sum((a - b) ** 2 for a, b in zip(p, t, strict=True)) / 3)
    mt, mp = sum(t) / 3, sum(p) / 3
    cov = sum((a - mt) * (b - mp) for a, b in zip(t, p, strict=True))
    var_t = sum((a - mt) ** 2 for a in t)
    var_p = sum((b - mp) ** 2 for b in p)
    pearson = cov / math.sqrt(var_t * var_p)
    cosine = sum(a * b for a, b in zip(t, p, strict=True)) / math.sqrt(
        sum(a * a for a in t) * sum(b * b for b in p)
    )
    scores = imputation_scores(truth, imputed, mask)  # median total is 4
    assert scores["rmse"] == pytest.approx(rmse)
    assert scores["pearson"] == pytest.approx(pearson)
    assert scores["cosine"] == pytest.approx(cosine)


def test_target_sum_and_per_cell_scale_invariance(counts):
    truth, noisy, mask = counts
    base = imputation_scores(truth, noisy, mask)
    factors = np.random.default_rng(1).uniform(0.1, 10.0, size=(len(truth), 1))
    # imputed on another per-cell scale: identical scores
    scaled = imputation_scores(truth, noisy * factors, mask)
    for key in base:
        assert scaled[key] == pytest.approx(base[key], rel=1e-9)
    # truth per-cell rescaled: identical scores once target_sum is fixed
    target = float(np.median(truth.sum(1)))
    rescaled_truth = imputation_scores(truth * factors, noisy, mask, target_sum=target)
    for key in base:
        assert rescaled_truth[key] == pytest.approx(base[key], rel=1e-9)
    # target_sum matters
    other = imputation_scores(truth, noisy, mask, target_sum=10 * target)
    assert other["rmse"] != pytest.approx(base["rmse"])


def test_scores_pool_only_masked_entries(counts):
    truth, noisy, mask = counts
    base = imputation_scores(truth, noisy, mask)
    t = normalize_log1p(truth, float(np.median(truth.sum(1))))[mask]
    p = normalize_log1p(noisy, float(np.median(truth.sum(1))))[mask]
    assert base["rmse"] == pytest.approx(np.sqrt(np.mean((p - t) ** 2)))
    assert base["pearson"] == pytest.approx(pearsonr(p, t)[0])
    assert base["cosine"] == pytest.approx(p @ t / np.sqrt((p @ p) * (t @ t)))
    # swapping unmasked entries between genes (same cell totals) changes nothing
    shuffled = noisy.copy()
    keep = ~mask[:, 0] & ~mask[:, 1]
    shuffled[keep, 0], shuffled[keep, 1] = noisy[keep, 1], noisy[keep, 0]
    assert imputation_scores(truth, shuffled, mask) == pytest.approx(base)


def test_sparse_inputs_and_blocked_streaming(counts, monkeypatch):
    truth, noisy, mask = counts
    dense = imputation_scores(truth, noisy, mask)
    sparse = imputation_scores(sp.csr_matrix(truth), sp.csc_matrix(noisy), sp.csr_matrix(mask))
    monkeypatch.setattr(imputation_module, "_BLOCK_ENTRIES", 7 * truth.shape[1])
    blocked = imputation_scores(truth, noisy, mask)
    for key in dense:
        assert sparse[key] == pytest.approx(dense[key], rel=1e-10)
        assert blocked[key] == pytest.approx(dense[key], rel=1e-10)


def test_constant_prediction_gives_nan_pearson(counts):
    truth, _, mask = counts
    flat = np.ones_like(truth)
    scores = imputation_scores(truth, flat, mask)
    assert np.isnan(scores["pearson"])
    assert np.isfinite(scores["rmse"]) and np.isfinite(scores["cosine"])


def test_imputation_scores_errors(counts):
    truth, noisy, mask = counts
    with pytest.raises(ValueError, match="shape"):
        imputation_scores(truth, noisy[:, :-1], mask)
    with pytest.raises(ValueError, match="`mask` has shape"):
        imputation_scores(truth, noisy, mask[:-1])
    with pytest.raises(ValueError, match="no True"):
        imputation_scores(truth, noisy, np.zeros_like(mask))
    with pytest.raises(ValueError, match="boolean"):
        imputation_scores(truth, noisy, mask.astype(int))
    bad = noisy.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="`imputed` contains 1 NaN"):
        imputation_scores(truth, bad, mask)
    bad[1, 1] = -2.0
    with pytest.raises(ValueError, match="`imputed` contains negative"):
        imputation_scores(truth, bad, mask)
    with pytest.raises(ValueError, match="target_sum"):
        imputation_scores(truth, noisy, mask, target_sum=-1.0)


# ---------------------------------------------------------------- per_gene_scores


def test_per_gene_perfect_and_constant_gene(counts):
    truth, _, _ = counts
    truth = truth.copy()
    truth[:, 3] = 0  # a gene with no counts: constant
    df = per_gene_scores(truth, truth, gene_names=[f"g{i}" for i in range(truth.shape[1])])
    assert list(df.columns) == ["pcc", "scc", "rmse", "n"]
    assert df.index[0] == "g0"
    assert np.isnan(df.loc["g3", "pcc"]) and np.isnan(df.loc["g3", "scc"])
    other = df.drop(index="g3")
    np.testing.assert_allclose(other["pcc"], 1.0)
    np.testing.assert_allclose(other["scc"], 1.0)
    np.testing.assert_allclose(df["rmse"], 0.0, atol=1e-12)
    assert (df["n"] == truth.shape[0]).all()


def test_per_gene_matches_scipy_on_masked_entries(counts, monkeypatch):
    truth, noisy, mask = counts
    target = float(np.median(truth.sum(1)))
    t = normalize_log1p(truth, target)
    p = normalize_log1p(noisy, target)
    monkeypatch.setattr(imputation_module, "_BLOCK_ENTRIES", 7 * truth.shape[0])
    df = per_gene_scores(sp.csr_matrix(truth), noisy, mask)
    for j in (0, 5, 17, 29):
        sel = mask[:, j]
        assert df.loc[j, "n"] == sel.sum()
        assert df.loc[j, "pcc"] == pytest.approx(pearsonr(t[sel, j], p[sel, j])[0])
        assert df.loc[j, "scc"] == pytest.approx(spearmanr(t[sel, j], p[sel, j])[0])
        rmse = np.sqrt(np.mean((t[sel, j] - p[sel, j]) ** 2))
        assert df.loc[j, "rmse"] == pytest.approx(rmse)


def test_per_gene_errors(counts):
    truth, noisy, _ = counts
    with pytest.raises(ValueError, match="gene_names"):
        per_gene_scores(truth, noisy, gene_names=["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        per_gene_scores(truth, noisy[:-1])


# ---------------------------------------------------------------- clustering_scores


def test_clustering_recovers_separated_clusters():
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c", "d"], 60)
    centres = rng.normal(0.0, 6.0, size=(4, 30))
    X = centres[np.searchsorted(["a", "b", "c", "d"], labels)] + rng.normal(size=(240, 30))
    X_before = X.copy()
    scores = clustering_scores(X, labels, resolutions=[0.1, 0.3, 0.5, 1.0])
    assert set(scores) == {"ari", "nmi", "resolution", "n_clusters"}
    assert scores["ari"] > 0.9
    assert scores["nmi"] > 0.9
    assert scores["n_clusters"] == 4
    assert scores["resolution"] in (0.1, 0.3, 0.5, 1.0)
    np.testing.assert_array_equal(X, X_before)


def test_clustering_random_labels_score_low():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 40)
    X = rng.normal(size=(120, 10))
    scores = clustering_scores(sp.csr_matrix(X), labels, n_pcs=50, resolutions=[0.5, 1.0])
    assert scores["ari"] < 0.3


def test_clustering_errors():
    X = np.random.default_rng(0).normal(size=(30, 5))
    with pytest.raises(ValueError, match="labels"):
        clustering_scores(X, np.zeros(29))
    bad = X.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        clustering_scores(bad, np.zeros(30))
