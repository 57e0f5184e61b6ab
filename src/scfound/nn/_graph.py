"""Spatial graphs and graph layers in pure torch (no DGL, no torch-geometric extensions).

Graphs are ``(2, n_edges)`` ``edge_index`` tensors with rows ``(source, target)``: a message flows
from ``source`` to ``target``. Self-loops are included where a layer needs them.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import eigsh
from torch import nn
from torch.nn import functional as F


def knn_graph(coords: torch.Tensor, n_neighbors: int, chunk_size: int = 4096) -> torch.Tensor:
    """Symmetric k-nearest-neighbour graph of points, with self-loops.

    Parameters
    ----------
    coords
        ``(n, 2)`` coordinates.
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
    diagonal of successive powers of the sparse walk matrix.
    """
    a = _adjacency(edge_index, n)
    deg = np.asarray(a.sum(0)).ravel()
    rw = (a @ sp.diags(1.0 / np.maximum(deg, 1e-12))).tocsr()
    out = np.zeros((n, k), dtype=np.float32)
    power = rw.copy()
    for step in range(k):
        out[:, step] = power.diagonal()
        if step + 1 < k:
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
