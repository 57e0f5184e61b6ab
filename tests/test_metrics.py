import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.spatial.distance import jensenshannon
from scipy.stats import pearsonr, spearmanr, zscore
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from scfound.metrics import _imputation as imputation_module
from scfound.metrics import (
    annotation_scores,
    clustering_scores,
    heldout_gene_scores,
    imputation_scores,
    normalize_log1p,
    per_class_scores,
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


def test_clustering_on_the_embedding_itself_and_at_the_number_of_labels():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1, 2], 40)
    X = rng.normal(size=(120, 40))
    X[:, :2] += 6.0 * np.array([[0, 0], [1, 0], [0, 1]])[labels]
    direct = clustering_scores(
        X, labels, n_pcs=None, resolutions=[0.05, 0.2, 2.0], at_n_labels=True
    )
    assert direct["ari"] > 0.9
    assert direct["n_clusters_at_k"] == 3 and direct["ari_at_k"] > 0.9
    assert 0 <= direct["nmi_at_k"] <= 1
    # at the finest resolution alone, the scores at k are those of its many clusters
    fine = clustering_scores(X, labels, n_pcs=None, resolutions=[2.0], at_n_labels=True)
    assert fine["n_clusters_at_k"] == fine["n_clusters"] > 3 and fine["ari_at_k"] == fine["ari"]


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


# ---------------------------------------------------------------- heldout_gene_scores


@pytest.fixture
def heldout():
    """Raw counts of 12 held-out genes and an imputation on a log scale, shifted negative."""
    rng = np.random.default_rng(3)
    truth = rng.poisson(rng.gamma(1.5, 2.0, size=(300, 12))).astype(np.float64)
    imputed = np.log1p(truth + rng.poisson(2.0, size=truth.shape)) - 0.5
    genes = [f"gene{j}" for j in range(truth.shape[1])]
    return truth, pd.DataFrame(imputed, columns=genes)


def _jsd_reference(t, p):
    return jensenshannon(np.clip(t, 0, None), np.clip(p, 0, None)) ** 2


def test_heldout_matches_scipy(heldout, monkeypatch):
    truth, imputed = heldout
    assert (imputed.to_numpy() < 0).any()  # negatives are allowed in the imputation
    monkeypatch.setattr(imputation_module, "_BLOCK_ENTRIES", 5 * truth.shape[0])  # 3 blocks
    df = heldout_gene_scores(sp.csr_matrix(truth), imputed)
    assert list(df.columns) == ["pcc", "scc", "rmse", "jsd"]
    assert list(df.index) == list(imputed.columns)
    p = imputed.to_numpy()
    for j in range(truth.shape[1]):
        t_j, p_j = truth[:, j], p[:, j]
        assert df.iloc[j]["pcc"] == pytest.approx(pearsonr(t_j, p_j)[0], abs=1e-12)
        assert df.iloc[j]["scc"] == pytest.approx(spearmanr(t_j, p_j)[0], abs=1e-12)
        rmse = np.sqrt(np.mean((zscore(p_j) - zscore(t_j)) ** 2))
        assert df.iloc[j]["rmse"] == pytest.approx(rmse, abs=1e-12)
        assert df.iloc[j]["jsd"] == pytest.approx(_jsd_reference(t_j, p_j), abs=1e-12)
    # scores differ between genes: the check above cannot pass with a constant answer
    assert df["pcc"].std() > 0.01 and df["jsd"].std() > 1e-4


def test_heldout_hand_computed_example():
    truth = np.array([[0.0], [1.0], [3.0]])
    imputed = np.array([[1.0], [1.0], [2.0]])
    df = heldout_gene_scores(truth, imputed, gene_names=["Gad2"])
    # z(t) = [-4, -1, 5] / sqrt(14), z(p) = [-1, -1, 2] / sqrt(2)
    pcc = 5 / math.sqrt(28)
    rmse = math.sqrt(
        ((-1 / math.sqrt(2) + 4 / math.sqrt(14)) ** 2)
        + ((-1 / math.sqrt(2) + 1 / math.sqrt(14)) ** 2)
        + ((2 / math.sqrt(2) - 5 / math.sqrt(14)) ** 2)
    ) / math.sqrt(3)
    # ranks (1, 2, 3) and (1.5, 1.5, 3)
    scc = 1.5 / math.sqrt(2 * 1.5)
    # P = (0, 1/4, 3/4), Q = (1/4, 1/4, 1/2), M = (1/8, 1/4, 5/8)
    kl_pm = 0.75 * math.log(0.75 / 0.625)
    kl_qm = 0.25 * math.log(2.0) + 0.5 * math.log(0.5 / 0.625)
    jsd = 0.5 * (kl_pm + kl_qm)
    row = df.loc["Gad2"]
    assert row["pcc"] == pytest.approx(pcc)
    assert row["scc"] == pytest.approx(scc)
    assert row["rmse"] == pytest.approx(rmse)
    assert row["rmse"] == pytest.approx(math.sqrt(2 - 2 * pcc))
    assert row["jsd"] == pytest.approx(jsd)


def test_heldout_perfect_prediction_and_invariances(heldout):
    truth, imputed = heldout
    perfect = heldout_gene_scores(truth, truth)
    np.testing.assert_allclose(perfect["pcc"], 1.0)
    np.testing.assert_allclose(perfect["scc"], 1.0)
    np.testing.assert_allclose(perfect["rmse"], 0.0, atol=1e-7)
    np.testing.assert_allclose(perfect["jsd"], 0.0, atol=1e-12)
    assert list(perfect.index) == list(range(truth.shape[1]))

    base = heldout_gene_scores(truth, imputed)
    factors = np.linspace(0.1, 50.0, truth.shape[1])
    # a gene-wise scale and shift of the imputation leaves PCC, SCC and RMSE unchanged
    affine = heldout_gene_scores(truth, imputed * factors + 3.0)
    for key in ("pcc", "scc", "rmse"):
        np.testing.assert_allclose(affine[key], base[key], rtol=1e-9)
    # a gene-wise scale of either matrix leaves JSD unchanged; a shift changes it
    scaled = heldout_gene_scores(truth * factors, imputed * factors[::-1])
    np.testing.assert_allclose(scaled["jsd"], base["jsd"], rtol=1e-9)
    assert not np.allclose(affine["jsd"], base["jsd"])
    # a worse imputation scores worse
    noise = np.random.default_rng(0).normal(0.0, 2.0, size=truth.shape)
    worse = heldout_gene_scores(truth, imputed + noise)
    assert (worse["pcc"] < base["pcc"]).all() and (worse["rmse"] > base["rmse"]).all()


def test_heldout_constant_genes():
    rng = np.random.default_rng(1)
    truth = rng.poisson(3.0, size=(40, 5)).astype(float)
    imputed = truth + rng.random(truth.shape)
    truth[:, 0] = 0.0  # gene not detected
    truth[:, 1] = 2.0  # constant, non-zero
    imputed[:, 2] = 7.0  # constant imputation
    imputed[:, 3] = -1.0  # no positive value in the imputation
    df = heldout_gene_scores(truth, imputed)
    assert df.loc[0].isna().all()
    assert df.loc[1, ["pcc", "scc", "rmse"]].isna().all()
    assert df.loc[1, "jsd"] == pytest.approx(_jsd_reference(truth[:, 1], imputed[:, 1]))
    for j in (2, 3):
        assert np.isnan(df.loc[j, "pcc"]) and np.isnan(df.loc[j, "scc"])
        assert df.loc[j, "rmse"] == pytest.approx(1.0)
        # an imputation without positive values counts as uniform, like a constant one
        assert df.loc[j, "jsd"] == pytest.approx(_jsd_reference(truth[:, j], np.ones(40)))
    assert df.loc[4].notna().all()


def test_heldout_gene_names_from_dataframes(heldout):
    truth, imputed = heldout
    truth_df = pd.DataFrame(truth, columns=imputed.columns)
    assert list(heldout_gene_scores(truth_df, imputed.to_numpy()).index) == list(imputed.columns)
    names = [f"g{j}" for j in range(truth.shape[1])]
    assert list(heldout_gene_scores(truth, imputed.to_numpy(), names).index) == names
    with pytest.raises(ValueError, match="columns"):
        heldout_gene_scores(truth_df, imputed[imputed.columns[::-1]])
    with pytest.raises(ValueError, match="index"):
        heldout_gene_scores(truth_df, imputed.set_axis(imputed.index + 1))
    with pytest.raises(ValueError, match="gene_names"):
        heldout_gene_scores(truth, imputed, names)


def test_heldout_errors(heldout):
    truth, imputed = heldout
    p = imputed.to_numpy()
    with pytest.raises(ValueError, match="shape"):
        heldout_gene_scores(truth, p[:, :-1])
    with pytest.raises(ValueError, match="gene_names"):
        heldout_gene_scores(truth, p, gene_names=["a", "b"])
    bad = p.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="`imputed` contains 1 NaN or infinite"):
        heldout_gene_scores(truth, bad)
    bad_truth = truth.copy()
    bad_truth[0, 0] = np.inf
    with pytest.raises(ValueError, match="`truth` contains 1 NaN or infinite"):
        heldout_gene_scores(bad_truth, p)
    with pytest.raises(ValueError, match="no cells"):
        heldout_gene_scores(truth[:0], p[:0])
    with pytest.raises(ValueError, match="2-d"):
        heldout_gene_scores(truth[:, 0], p[:, 0])


# ---------------------------------------------------------------- annotation


def test_annotation_scores_hand_computed():
    truth = ["a", "a", "b", "b", "c"]
    predicted = ["a", "b", "b", "b", "d"]  # "d" is only predicted, "c" never
    scores = annotation_scores(truth, predicted)
    assert set(scores) == {"accuracy", "macro_f1", "weighted_f1"}
    f1 = {"a": 2 / 3, "b": 0.8, "c": 0.0, "d": 0.0}
    assert scores["accuracy"] == pytest.approx(0.6)
    assert scores["macro_f1"] == pytest.approx(sum(f1.values()) / 4)
    assert scores["weighted_f1"] == pytest.approx((2 * f1["a"] + 2 * f1["b"]) / 5)

    df = per_class_scores(truth, predicted)
    assert list(df.index) == ["a", "b", "c", "d"]
    assert df.index.name == "class"
    assert list(df.columns) == ["precision", "recall", "f1", "support"]
    np.testing.assert_allclose(df["precision"], [1.0, 2 / 3, 0.0, 0.0])
    np.testing.assert_allclose(df["recall"], [0.5, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(df["f1"], list(f1.values()))
    assert df["support"].tolist() == [2, 2, 1, 0]


def test_annotation_scores_match_sklearn():
    rng = np.random.default_rng(0)
    classes = np.array(["Astro", "Micro", "Oligo", "Pyramidal", "Endo"])
    truth = rng.choice(classes[:4], 500, p=[0.1, 0.05, 0.35, 0.5])
    predicted = np.where(rng.random(500) < 0.7, truth, rng.choice(classes, 500))
    truth_cat = pd.Series(pd.Categorical(truth))  # categorical input as in adata.obs
    scores = annotation_scores(truth_cat, list(predicted))
    assert scores["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert scores["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert scores["weighted_f1"] == pytest.approx(f1_score(truth, predicted, average="weighted"))
    assert scores["macro_f1"] < scores["weighted_f1"]  # rare classes are predicted worse

    df = per_class_scores(truth_cat, predicted)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=sorted(classes), zero_division=0
    )
    assert list(df.index) == sorted(classes)
    np.testing.assert_allclose(df["precision"], precision)
    np.testing.assert_allclose(df["recall"], recall)
    np.testing.assert_allclose(df["f1"], f1)
    np.testing.assert_array_equal(df["support"], support)
    assert df.loc["Endo", "support"] == 0 and df.loc["Endo", "precision"] == 0.0


def test_annotation_errors():
    with pytest.raises(ValueError, match="`truth` has 3 labels but `predicted` has 2"):
        annotation_scores(["a", "b", "a"], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        annotation_scores([], [])
    with pytest.raises(ValueError, match="missing"):
        per_class_scores(["a", None], ["a", "b"])
    with pytest.raises(ValueError, match="one-dimensional"):
        per_class_scores(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="`predicted` has 1;"):
        per_class_scores(["a", "b"], ["a"])


def test_embedding_scores_tell_mixed_from_separated_batches():
    from scfound.metrics import embedding_scores

    rng = np.random.default_rng(0)
    types = np.repeat([0, 1, 2], 100)
    batch = np.tile(["x", "y"], 150)
    mixed = rng.normal(size=(300, 10)) + 6 * np.eye(3, 10)[types]
    # the same types, but every batch shifted away from the other
    split = mixed + 8 * np.eye(10)[9][None] * (batch == "y")[:, None]
    good = embedding_scores(mixed, types, batch)
    bad = embedding_scores(split, types, batch)
    assert set(good) == {"nmi", "ari", "asw_label", "asw_batch", "ilisi", "graph_connectivity"}
    assert good["nmi"] > 0.95 and good["ari"] > 0.95
    assert good["asw_batch"] > bad["asw_batch"] + 0.3 and good["ilisi"] > bad["ilisi"] + 0.5
    assert set(embedding_scores(mixed, types)) == {"nmi", "ari", "asw_label"}  # no batch
    with pytest.raises(ValueError, match="labels"):
        embedding_scores(mixed, types[:10])
    with pytest.raises(ValueError, match="finite"):
        embedding_scores(np.full((300, 2), np.nan), types)


def test_confounder_information_finds_the_confounder():
    from scfound.metrics import confounder_information

    rng = np.random.default_rng(0)
    depth = rng.normal(size=400)
    batch = np.repeat(["a", "b"], 200)
    free = rng.normal(size=(400, 3))
    with_depth = np.c_[free, depth + 0.1 * rng.normal(size=400)]
    with_batch = free + 3.0 * (batch == "b")[:, None]
    assert confounder_information(with_depth, depth) > confounder_information(free, depth) + 0.3
    assert confounder_information(free, depth) < 0.1
    assert confounder_information(with_batch, batch) > confounder_information(free, batch) + 0.3
    assert confounder_information(free, pd.Series(batch, dtype="category")) < 0.1
    # integer batch codes as categories when told
    codes = (batch == "b").astype(int)
    assert confounder_information(with_batch, codes, categorical=True) == pytest.approx(
        confounder_information(with_batch, batch)
    )
    with pytest.raises(ValueError, match="confounder"):
        confounder_information(free, depth[:10])
    with pytest.raises(ValueError, match="NaN"):
        confounder_information(free, np.r_[depth[:-1], np.nan])
    with pytest.raises(ValueError, match="finite"):
        confounder_information(np.full((400, 2), np.inf), depth)


def test_neighbor_batch_composition_is_size_corrected_and_sees_separation():
    from scfound.metrics import neighbor_batch_composition

    rng = np.random.default_rng(0)
    batch = pd.Series(np.repeat(["a", "b"], [300, 100]), index=[f"c{i}" for i in range(400)])
    mixed = rng.normal(size=(400, 5))
    shares = neighbor_batch_composition(mixed, batch)
    assert list(shares.columns) == ["a", "b"] and list(shares.index) == list(batch.index)
    np.testing.assert_allclose(shares.sum(1), 1.0)
    # raw neighbour counts would give about 0.75 / 0.25; corrected for the sizes, about 0.5 each
    assert abs(shares["b"].mean() - 0.5) < 0.05
    separated = mixed + 10.0 * (batch == "b").to_numpy()[:, None]
    own = neighbor_batch_composition(separated, batch.to_numpy(), n_neighbors=20)
    assert (own.to_numpy()[np.arange(400), (batch == "b").to_numpy().astype(int)] == 1).all()
    assert list(own.index) == list(range(400))
    with pytest.raises(ValueError, match="single value"):
        neighbor_batch_composition(mixed, ["a"] * 400)
    with pytest.raises(ValueError, match="n_neighbors"):
        neighbor_batch_composition(mixed, batch, n_neighbors=400)
    with pytest.raises(ValueError, match="batch"):
        neighbor_batch_composition(mixed, batch[:10])
    with pytest.raises(ValueError, match="missing values"):
        neighbor_batch_composition(mixed, np.r_[batch.to_numpy()[:-1], None])


def test_graph_clustering_scores_match_the_embedding_path():
    import anndata as ad
    import scanpy as sc

    from scfound.metrics import clustering_scores, graph_clustering_scores

    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 60)
    X = rng.normal(size=(180, 8)) + 2.5 * np.eye(3, 8)[labels]
    tmp = ad.AnnData(X)
    sc.pp.neighbors(tmp, use_rep="X", transformer="sklearn", random_state=0)
    from_graph = graph_clustering_scores(tmp.obsp["connectivities"], labels)
    assert from_graph == clustering_scores(X, labels, n_pcs=None)
    noise = graph_clustering_scores(tmp.obsp["connectivities"], rng.permutation(labels))
    assert from_graph["ari"] > 0.5 > noise["ari"]
    with pytest.raises(ValueError, match="square"):
        graph_clustering_scores(np.ones((4, 3)), labels[:4])
