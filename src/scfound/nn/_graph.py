"""k-nearest-neighbour graphs and graph layers in pure torch (no DGL, no torch-geometric).

Graphs are ``(2, n_edges)`` ``edge_index`` tensors with rows ``(source, target)``: a message flows
from ``source`` to ``target``. Self-loops are included where a layer needs them.

Every k-NN graph of scfound is built here: :func:`knn_graph` on tensors, inside a model's step
(on the step's device); :func:`knn_indices` (exact) for graphs built once from numpy arrays, such
as :func:`knn_adjacency` and :func:`scfound.pp.knn_smoothing_matrix`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import eigsh
from scipy.spatial import cKDTree
from sklearn.neighbors import NearestNeighbors
from torch import nn
from torch.nn import functional as F

#: most dimensions of points searched with a k-d tree by :func:`knn_indices`
KD_TREE_MAX_DIM = 3


def knn_graph(coords: torch.Tensor, n_neighbors: int, chunk_size: int = 4096) -> torch.Tensor:
    """Symmetric k-nearest-neighbour graph of points, with self-loops.

    Parameters
    ----------
    coords
        ``(n, 2)`` or ``(n, 3)`` coordinates (any number of columns works).
    n_neighbors
        Neighbours per point (capped at ``n - 1``).
    chunk_size
        Rows of the distance matrix computed at once, to bound memory at ``chunk_size * n``.

    Returns
    -------
    ``(2, n_edges)`` long tensor, symmetric (both directions), plus self-loops.

    """
    n = coords.shape[0]
    k = min(n_neighbors, n - 1)
    self_loops = torch.arange(n, device=coords.device).repeat(2, 1)
    if k <= 0:
        return self_loops
    coords = coords.float()
    nbrs = []
    for start in range(0, n, chunk_size):
        d = torch.cdist(coords[start : start + chunk_size], coords)
        rows = torch.arange(start, min(start + chunk_size, n), device=coords.device)
        d[torch.arange(len(rows)), rows] = float("inf")
        nbrs.append(d.topk(k, largest=False).indices)
    nbr = torch.cat(nbrs)
    src = nbr.reshape(-1)
    dst = torch.arange(n, device=coords.device).repeat_interleave(k)
    edges = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], dim=1)
    edges = torch.unique(edges, dim=1)
    return torch.cat([edges, self_loops], dim=1)


def knn_indices(
    points: np.ndarray, n_neighbors: int, *, include_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest points of every point (exact, Euclidean).

    Coordinates (at most :data:`KD_TREE_MAX_DIM` dimensions) are searched with scipy's k-d tree;
    more dimensions (e.g. principal components) with scikit-learn's
    :class:`~sklearn.neighbors.NearestNeighbors`, which uses BLAS there and is much faster.

    Parameters
    ----------
    points
        ``(n, d)`` coordinates (spatial positions, principal components, ...).
    n_neighbors
        Neighbours per point, capped at ``n - 1`` other points (``n`` with ``include_self``).
    include_self
        Count the point itself among its neighbours. Either way a point is never confused with
        another point at the same position.

    Returns
    -------
    ``(indices, distances)``, both ``(n, k)``, each row sorted by distance (with
    ``include_self``, the point itself is first when the search did not find it).
    """
    points = np.asarray(points)
    n = len(points)
    k = min(int(n_neighbors), n if include_self else n - 1)
    if k < 1:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0))
    n_query = k if include_self else k + 1
    if points.ndim == 2 and points.shape[1] <= KD_TREE_MAX_DIM:
        dist, idx = cKDTree(points).query(points, k=n_query)
    else:
        dist, idx = NearestNeighbors(n_neighbors=n_query).fit(points).kneighbors(points)
    dist, idx = dist.reshape(n, n_query), idx.reshape(n, n_query)
    own = idx == np.arange(n)[:, None]
    missing = ~own.any(axis=1)  # other points at distance 0 came first
    if include_self:
        idx[missing] = np.c_[np.flatnonzero(missing), idx[missing, :-1]]
        dist[missing] = np.c_[np.zeros(missing.sum()), dist[missing, :-1]]
        return idx, dist
    own[missing, -1] = True
    return idx[~own].reshape(n, k), dist[~own].reshape(n, k)


def knn_adjacency(
    coords: np.ndarray, n_neighbors: int, groups: np.ndarray | None = None
) -> sp.csr_matrix:
    """Symmetric k-nearest-neighbour adjacency within each group, without self-loops.

    Parameters
    ----------
    coords
        ``(n, 2)`` or ``(n, 3)`` coordinates.
    n_neighbors
        Neighbours per cell (capped at the group size minus one).
    groups
        Group code per cell (slices, fields of view); no edge joins two groups, so groups may
        share coordinates. ``None``: one group.

    Returns
    -------
    ``(n, n)`` binary CSR matrix (``float32``).
    """
    n = len(coords)
    groups = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups)
    rows, cols = [], []
    for code in np.unique(groups):
        cells = np.flatnonzero(groups == code)
        idx, _ = knn_indices(coords[cells], n_neighbors)
        if idx.shape[1] == 0:
            continue
        rows.append(np.repeat(cells, idx.shape[1]))
        cols.append(cells[idx].ravel())
    if not rows:
        return sp.csr_matrix((n, n), dtype=np.float32)
    r, c = np.concatenate(rows), np.concatenate(cols)
    adj = sp.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(n, n))
    adj = ((adj + adj.T) > 0).astype(np.float32)
    adj.setdiag(0)
    adj.eliminate_zeros()
    return adj.tocsr()


def scatter_softmax(scores: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Softmax of ``scores`` (``(n_edges, heads)``) over the edges that share a target ``index``."""
    idx = index.unsqueeze(-1).expand_as(scores)
    smax = torch.full((n, scores.shape[1]), -torch.inf, device=scores.device, dtype=scores.dtype)
    smax = smax.scatter_reduce(0, idx, scores, reduce="amax", include_self=True)
    exp = torch.exp(scores - smax.gather(0, idx))
    denom = torch.zeros_like(smax).scatter_add_(0, idx, exp)
    return exp / denom.gather(0, idx).clamp_min(1e-16)


class GATConv(nn.Module):
    """Graph attention layer (Velickovic et al., 2018), heads concatenated.

    Parameters
    ----------
    in_dim
        Input width.
    out_dim
        Output width (``n_heads * head_dim``).
    n_heads
        Attention heads; ``out_dim`` must be divisible by it.
    attn_dropout
        Dropout on the attention coefficients.

    """

    def __init__(self, in_dim: int, out_dim: int, n_heads: int = 8, attn_dropout: float = 0.0):
        super().__init__()
        if out_dim % n_heads:
            raise ValueError(f"out_dim={out_dim} must be divisible by n_heads={n_heads}.")
        self.n_heads, self.head_dim = n_heads, out_dim // n_heads
        self.lin = nn.Linear(in_dim, out_dim, bias=False)
        self.att_src = nn.Parameter(torch.empty(n_heads, self.head_dim))
        self.att_dst = nn.Parameter(torch.empty(n_heads, self.head_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.attn_dropout = nn.Dropout(attn_dropout)
        nn.init.xavier_uniform_(self.att_src)
        nn.init.xavier_uniform_(self.att_dst)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Aggregate neighbours: ``(n, in_dim) -> (n, out_dim)``."""
        n = x.shape[0]
        h = self.lin(x).view(n, self.n_heads, self.head_dim)
        src, dst = edge_index
        score = (h * self.att_src).sum(-1)[src] + (h * self.att_dst).sum(-1)[dst]
        alpha = self.attn_dropout(scatter_softmax(F.leaky_relu(score, 0.2), dst, n))
        msg = h[src] * alpha.unsqueeze(-1)
        out = torch.zeros_like(h).index_add_(0, dst, msg)
        return out.reshape(n, -1) + self.bias


class GINConv(nn.Module):
    """Graph isomorphism layer ``h' = MLP((1 + eps) h + sum_{neighbours} h)``."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 64):
        super().__init__()
        self.eps = nn.Parameter(torch.zeros(()))
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """``x`` is ``(n, ..., in_dim)``; neighbours are summed along the first axis."""
        src, dst = edge_index
        keep = src != dst
        agg = torch.zeros_like(x).index_add_(0, dst[keep], x[src[keep]])
        return self.mlp((1 + self.eps) * x + agg)


def _adjacency(edge_index: np.ndarray, n: int) -> sp.csr_matrix:
    """Binary symmetric adjacency without self-loops."""
    src, dst = edge_index
    keep = src != dst
    a = sp.csr_matrix((np.ones(keep.sum()), (src[keep], dst[keep])), shape=(n, n))
    a = ((a + a.T) > 0).astype(np.float64)
    return a


def laplacian_eigenvectors(edge_index: np.ndarray, n: int, k: int = 10) -> np.ndarray:
    """The ``k`` eigenvectors of ``L = I - D^-1/2 A D^-1/2`` after the trivial one (LapPE).

    Returns an ``(n, k)`` float32 array; columns beyond ``n - 2`` are zero-padded. Eigenvector
    signs are arbitrary: flip them at random during training (SpaFormer) or use SignNet.
    """
    out = np.zeros((n, k), dtype=np.float32)
    if n < 3:
        return out
    a = _adjacency(edge_index, n)
    deg = np.asarray(a.sum(1)).ravel()
    dinv = sp.diags(1.0 / np.sqrt(np.maximum(deg, 1e-12)))
    lap = sp.identity(n) - dinv @ a @ dinv
    n_eig = min(k + 1, n - 1)
    if n <= 512:
        vals, vecs = np.linalg.eigh(lap.toarray())
    else:
        # smallest eigenvalues of L are the largest of 2I - L; converges faster than which="SM"
        vals, vecs = eigsh(2 * sp.identity(n) - lap, k=n_eig, which="LA", tol=1e-4)
        vals = 2 - vals
    order = np.argsort(vals)[1:n_eig]
    vecs = vecs[:, order]
    out[:, : vecs.shape[1]] = vecs
    return out


def random_walk_pe(edge_index: np.ndarray, n: int, k: int = 16) -> np.ndarray:
    """RWPE: random-walk return probabilities ``[RW_ii, ..., RW^k_ii]``, ``RW = A D^-1``.

    Computed with sparse matrix products, ``O(k * n_edges * n)`` at worst for dense powers; uses the
    diagonal of successive powers of the sparse walk matrix. Once a power fills more than 5 % of
    its entries (a graph with short paths between most nodes, e.g. a gene co-expression graph),
    the remaining powers are applied to blocks of its columns as dense arrays instead.
    """
    a = _adjacency(edge_index, n)
    deg = np.asarray(a.sum(0)).ravel()
    rw = (a @ sp.diags(1.0 / np.maximum(deg, 1e-12))).tocsr()
    out = np.zeros((n, k), dtype=np.float32)
    power = rw.copy()
    for step in range(k):
        out[:, step] = power.diagonal()
        if step + 1 == k:
            break
        if power.nnz > 0.05 * n * n:
            block = max(1, min(n, 2**24 // max(n, 1)))
            for start in range(0, n, block):
                cols = np.arange(start, min(start + block, n))
                columns = power[:, cols].toarray()
                for later in range(step + 1, k):
                    columns = rw @ columns
                    out[cols, later] = columns[cols, np.arange(len(cols))]
            break
        power = (power @ rw).tocsr()
        power.data[power.data < 1e-8] = 0.0
        power.eliminate_zeros()
    return out


class GATEncoder(nn.Module):
    """Pre-LN residual stack of :class:`GATConv` + feed-forward blocks (the SpaGAT encoder).

    The same block layout as :class:`~scfound.nn.TransformerEncoder`, with graph attention over the
    spatial neighbours in place of global self-attention.
    """

    def __init__(
        self, dim: int, n_layers: int, n_heads: int, dropout: float = 0.0, attn_dropout: float = 0.0
    ):
        super().__init__()
        from ._attention import FeedForward

        self.norms1 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(n_layers))
        self.convs = nn.ModuleList(
            GATConv(dim, dim, n_heads, attn_dropout) for _ in range(n_layers)
        )
        self.norms2 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(n_layers))
        self.ffs = nn.ModuleList(FeedForward(dim, dropout=dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Encode ``(n, dim)`` node features on the graph ``edge_index``."""
        for n1, conv, n2, ff in zip(self.norms1, self.convs, self.norms2, self.ffs, strict=True):
            x = x + conv(n1(x), edge_index)
            x = x + ff(n2(x))
        return self.norm(x)
