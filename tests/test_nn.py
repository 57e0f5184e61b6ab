import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scvi.distributions import ZeroInflatedNegativeBinomial
from sklearn.neighbors import NearestNeighbors

from scfound import nn as snn


def test_favor_attention_approximates_softmax():
    torch.manual_seed(0)
    n, d = 64, 16
    attn = snn.LinearAttention(d, n_heads=1, n_features=4096, redraw_interval=0).eval()
    x = torch.randn(n, d) * 0.3
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    exact = torch.softmax(q @ k.T / d**0.5, dim=-1) @ v
    approx = attn(x)
    expected = attn.out(exact)
    rel = (approx - expected).norm() / expected.norm()
    assert rel < 0.05


def test_attention_padding_mask_ignores_padded_keys():
    torch.manual_seed(0)
    attn = snn.LinearAttention(16, 2, redraw_interval=0).eval()
    x = torch.randn(1, 10, 16)
    padded = torch.cat([x, torch.randn(1, 5, 16) * 100], dim=1)
    mask = torch.zeros(1, 15, dtype=torch.bool)
    mask[:, 10:] = True
    assert torch.allclose(attn(x), attn(padded, mask)[:, :10], atol=1e-5)


def test_transformer_is_permutation_equivariant():
    torch.manual_seed(0)
    enc = snn.TransformerEncoder(32, 2, 4).eval()
    x = torch.randn(50, 32)
    perm = torch.randperm(50)
    assert torch.allclose(enc(x)[perm], enc(x[perm]), atol=1e-5)


def test_knn_graph_matches_sklearn_and_is_symmetric():
    rng = np.random.default_rng(0)
    coords = rng.random((300, 2)).astype(np.float32)
    edges = snn.knn_graph(torch.from_numpy(coords), 5, chunk_size=64).numpy()
    pairs = set(map(tuple, edges.T))
    assert all((b, a) in pairs for a, b in pairs)
    assert all((i, i) in pairs for i in range(300))
    nbr = NearestNeighbors(n_neighbors=5).fit(coords).kneighbors(return_distance=False)  # no self
    for i in range(300):
        for j in nbr[i]:
            assert (j, i) in pairs


@pytest.mark.parametrize("n_dims", [2, 20])  # k-d tree / scikit-learn
def test_knn_indices_are_exact_and_never_confuse_a_cell_with_its_twin(n_dims):
    rng = np.random.default_rng(0)
    points = rng.random((200, n_dims))
    points[1] = points[0]  # two cells at the same position
    idx, dist = snn.knn_indices(points, 6)
    full = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(full, np.inf)
    np.testing.assert_allclose(dist, np.sort(full, 1)[:, :6], atol=1e-10)
    assert not (idx == np.arange(200)[:, None]).any()
    assert idx[0, 0] == 1 and idx[1, 0] == 0 and dist[0, 0] == 0
    with_self, dist_self = snn.knn_indices(points, 6, include_self=True)
    assert (with_self == np.arange(200)[:, None]).any(1).all()
    # the point itself and its 5 nearest others (the same up to ties)
    np.testing.assert_allclose(np.sort(dist_self, 1), np.c_[np.zeros(200), dist[:, :5]], atol=1e-6)
    assert snn.knn_indices(points[:3], 10)[0].shape == (3, 2)
    assert snn.knn_indices(points[:1], 10)[0].shape == (1, 0)


def test_knn_adjacency_is_symmetric_within_groups():
    rng = np.random.default_rng(0)
    coords = rng.random((100, 2))
    coords[50:] = coords[:50]  # two groups on the same coordinates
    groups = np.repeat([0, 1], 50)
    adj = snn.knn_adjacency(coords, 4, groups)
    rows, cols = adj.nonzero()
    assert (groups[rows] == groups[cols]).all() and (rows != cols).all()
    assert (adj != adj.T).nnz == 0 and (np.asarray(adj.sum(1)).ravel() >= 4).all()
    # each group alone gives the same graph
    alone = snn.knn_adjacency(coords[:50], 4)
    assert (adj[:50, :50] != alone).nnz == 0
    assert snn.knn_adjacency(coords[:1], 4).nnz == 0


def test_log_normalize_numpy_and_torch_agree():
    import scipy.sparse as sp

    from scfound._normalize import log_normalize

    X = np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    expected = np.log1p(np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [0.0, 4.0, 0.0]]))
    np.testing.assert_allclose(log_normalize(X, 4.0), expected)
    sparse = log_normalize(sp.csr_matrix(X), 4.0)
    assert sp.issparse(sparse) and sparse.nnz == 3
    np.testing.assert_allclose(sparse.toarray(), expected)
    # a library below min_library is raised to it; log=False gives the scaled counts
    clipped = log_normalize(X, 4.0, min_library=1.0, log=False)
    np.testing.assert_allclose(clipped[2], [0.0, 2.0, 0.0])
    # the library may come from elsewhere (all genes, when X holds some of them)
    np.testing.assert_allclose(
        log_normalize(X[:, :1], 4.0, library=np.array([4.0, 0.0, 1.0])), np.log1p(X[:, :1])
    )
    x32 = sp.csr_matrix(X.astype(np.float32))
    assert log_normalize(x32, 4.0, library=np.ones(3, np.float32)).dtype == np.float32
    t = torch.tensor(X)
    np.testing.assert_allclose(snn.log_normalize(t, 4.0).numpy(), expected)
    np.testing.assert_allclose(
        snn.log_normalize(t, 4.0, min_library=1.0, log=False).numpy(), clipped
    )


def test_gat_only_sees_neighbours():
    torch.manual_seed(0)
    gat = snn.GATConv(8, 8, n_heads=2).eval()
    x = torch.randn(4, 8)
    edges = torch.tensor([[0, 1, 0, 1, 2, 3], [1, 0, 0, 1, 2, 3]])  # 0-1 linked, 2 and 3 alone
    out = gat(x, edges)
    x2 = x.clone()
    x2[3] += 5.0
    out2 = gat(x2, edges)
    assert torch.allclose(out[:3], out2[:3])
    assert not torch.allclose(out[3], out2[3])


def _ring(n):
    src = np.arange(n)
    dst = (src + 1) % n
    return np.stack([np.r_[src, dst], np.r_[dst, src]])


def test_laplacian_eigenvectors_are_eigenvectors():
    n = 40
    edges = _ring(n)
    vecs = snn.laplacian_eigenvectors(edges, n, k=4)
    a = sp.csr_matrix((np.ones(edges.shape[1]), edges), shape=(n, n)).toarray()
    d = a.sum(1)
    lap = np.eye(n) - a / np.sqrt(np.outer(d, d))
    for j in range(4):
        v = vecs[:, j]
        lam = v @ lap @ v
        assert np.allclose(lap @ v, lam * v, atol=1e-4)
        assert lam > 1e-6  # the trivial eigenvector is skipped


def test_random_walk_pe_on_a_ring():
    n = 10
    pe = snn.random_walk_pe(_ring(n), n, k=4)
    # on a ring: P(return in 1 step) = 0, in 2 steps = 1/2, in 3 = 0, in 4 = 3/8
    assert np.allclose(pe[:, :4], [0, 0.5, 0, 0.375], atol=1e-6)


def test_sinusoid_formula():
    pe = snn.sinusoid_2d(torch.tensor([3.0]), torch.tensor([7.0]), 8)[0]
    expected = [np.sin(3), np.cos(3), np.sin(3 / 100), np.cos(3 / 100)]
    expected += [np.sin(7), np.cos(7), np.sin(7 / 100), np.cos(7 / 100)]
    assert np.allclose(pe.numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        snn.sinusoid_2d(torch.tensor([1.0]), torch.tensor([1.0]), 6)


def test_zinb_nll_matches_scvi():
    torch.manual_seed(0)
    x = torch.poisson(torch.rand(20, 5) * 4)
    mu, theta, logit = torch.rand(20, 5) * 5 + 0.1, torch.rand(20, 5) * 3 + 0.1, torch.randn(20, 5)
    ref = -ZeroInflatedNegativeBinomial(mu=mu, theta=theta, zi_logits=logit).log_prob(x)
    assert torch.allclose(snn.zinb_nll(x, mu, theta, logit), ref, atol=1e-4)


def test_positional_encodings_shapes_and_properties():
    torch.manual_seed(0)
    coords = torch.rand(30, 2)
    edges = snn.knn_graph(coords, 4)
    h = torch.randn(30, 16)
    feats = torch.from_numpy(snn.laplacian_eigenvectors(edges.numpy(), 30, 10))
    for name in snn.POSITIONAL_ENCODINGS:
        pe = snn.positional_encoding(name, 16)
        f = None if pe.features is None else torch.randn(30, pe.n_features)
        if pe.features == "lappe":
            f = feats
        assert pe(h, snn.normalize_coords(coords), edges, f).shape == (30, 16)
    signnet = snn.positional_encoding("signnet", 16).eval()
    assert torch.allclose(signnet(h, coords, edges, feats), signnet(h, coords, edges, -feats))
    lap = snn.positional_encoding("lappe", 16)
    lap.eval()
    assert torch.equal(lap(h, coords, edges, feats), lap(h, coords, edges, feats))
    with pytest.raises(ValueError, match="pos_encoding"):
        snn.positional_encoding("relative", 16)
