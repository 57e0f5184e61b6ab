"""Spatial positional encodings for cell tokens (every variant compared in the SpaFormer paper).

All encoders share one call signature, ``pe(h, coords, edge_index, features) -> (n, dim)``, and the
result is added to the expression embedding ``h``:

* ``coords``: ``(n, 2)`` (x, y) or ``(n, 3)`` (x, y, z) coordinates min-max scaled to ``[0, 1]``
  within the group (aspect kept, so a thin volume stays thin);
* ``edge_index``: the group's spatial graph (see :func:`~scfound.nn.knn_graph`);
* ``features``: precomputed per-cell graph features (Laplacian eigenvectors or random-walk
  probabilities), when :attr:`PositionalEncoding.features` names them.
"""

from __future__ import annotations

import torch
from torch import nn

from ._graph import GATConv, GINConv

GRID = 100  # patch grid of the paper: 100 x 100 patches per group


def sinusoid_2d(x: torch.Tensor, y: torch.Tensor, dim: int) -> torch.Tensor:
    """2-D sinusoid encoding (SpaFormer Eq. 8-11): first ``dim/2`` channels encode x, the rest y."""
    if dim % 4:
        raise ValueError(f"the 2-D sinusoid encoding needs a width divisible by 4, got {dim}.")
    freq = 10000 ** (-4 * torch.arange(dim // 4, device=x.device, dtype=torch.float32) / dim)

    def encode(v: torch.Tensor) -> torch.Tensor:
        ang = v.float().unsqueeze(-1) * freq
        return torch.stack([ang.sin(), ang.cos()], dim=-1).flatten(-2)

    return torch.cat([encode(x), encode(y)], dim=-1)


def sinusoid_3d(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, dim: int) -> torch.Tensor:
    """3-D sinusoid encoding: three equal blocks of channels encode x, y and z.

    Each axis gets ``2 * (dim // 6)`` channels (sine and cosine of ``dim // 6`` frequencies
    ``10000 ** (-i / (dim // 6))``, the 2-D encoding's frequencies for that many channels); the
    ``dim % 6`` channels left over are zero.
    """
    n_freq = dim // 6
    if n_freq < 1:
        raise ValueError(f"the 3-D sinusoid encoding needs a width of at least 6, got {dim}.")
    freq = 10000 ** (-torch.arange(n_freq, device=x.device, dtype=torch.float32) / n_freq)

    def encode(v: torch.Tensor) -> torch.Tensor:
        ang = v.float().unsqueeze(-1) * freq
        return torch.stack([ang.sin(), ang.cos()], dim=-1).flatten(-2)

    out = torch.cat([encode(x), encode(y), encode(z)], dim=-1)
    return nn.functional.pad(out, (0, dim - out.shape[-1]))


def sinusoid(p: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoid encoding of ``(n, 2)`` or ``(n, 3)`` positions (:func:`sinusoid_2d` / ``_3d``)."""
    if p.shape[-1] == 3:
        return sinusoid_3d(p[:, 0], p[:, 1], p[:, 2], dim)
    return sinusoid_2d(p[:, 0], p[:, 1], dim)


def normalize_coords(coords: torch.Tensor) -> torch.Tensor:
    """Scale coordinates to ``[0, 1]`` by the larger side of their bounding box (aspect kept)."""
    low = coords.amin(0)
    span = (coords.amax(0) - low).max().clamp_min(1e-12)
    return (coords - low) / span


def patch_index(coords: torch.Tensor) -> torch.Tensor:
    """Integer patch coordinates on the ``GRID x GRID`` grid for ``[0, 1]`` coordinates."""
    return (coords * GRID).long().clamp(0, GRID - 1)


class PositionalEncoding(nn.Module):
    """Base class: no encoding (returns zeros)."""

    #: name of the precomputed per-cell graph feature this encoding needs, if any
    features: str | None = None
    n_features: int = 0
    #: whether the encoding reads the spatial graph
    needs_graph: bool = False

    def __init__(self, dim: int, n_dims: int = 2):
        super().__init__()
        if n_dims not in (2, 3):
            raise ValueError(f"n_dims must be 2 (x, y) or 3 (x, y, z), got {n_dims!r}.")
        self.dim = dim
        self.n_dims = n_dims

    def forward(self, h, coords, edge_index=None, features=None) -> torch.Tensor:
        """Return the ``(n, dim)`` encoding to add to ``h``."""
        return torch.zeros_like(h)


class LearnablePatchPE(PositionalEncoding):
    """ViT-style lookup table of ``100 x 100`` learnable patch embeddings.

    In 3-D a second table of ``100`` learnable z-layer embeddings is added (a full
    ``100 x 100 x 100`` table would hold a million rows, most never visited).
    """

    def __init__(self, dim: int, n_dims: int = 2):
        super().__init__(dim, n_dims)
        self.table = nn.Embedding(GRID * GRID, dim)
        nn.init.normal_(self.table.weight, std=0.02)
        if n_dims == 3:
            self.z_table = nn.Embedding(GRID, dim)
            nn.init.normal_(self.z_table.weight, std=0.02)

    def forward(self, h, coords, edge_index=None, features=None):
        p = patch_index(coords)
        out = self.table(p[:, 0] * GRID + p[:, 1])
        if self.n_dims == 3:
            out = out + self.z_table(p[:, 2])
        return out


class SinusoidPatchPE(PositionalEncoding):
    """Fixed 2-D (or 3-D) sinusoid of the integer patch coordinates."""

    def forward(self, h, coords, edge_index=None, features=None):
        return sinusoid(patch_index(coords), self.dim)


class SinusoidCoordPE(PositionalEncoding):
    """2-D (or 3-D) sinusoid of continuous coordinates scaled to patch units (``100 * [0, 1]``)."""

    def forward(self, h, coords, edge_index=None, features=None):
        return sinusoid(coords * GRID, self.dim)


class NaivePE(PositionalEncoding):
    """Linear map of the normalised coordinates, ``P = C W + b`` (paper Eq. 12)."""

    def __init__(self, dim: int, n_dims: int = 2):
        super().__init__(dim, n_dims)
        self.lin = nn.Linear(n_dims, dim)

    def forward(self, h, coords, edge_index=None, features=None):
        return self.lin(coords)


class RandomWalkPE(PositionalEncoding):
    """RWPE: linear map of the ``k`` random-walk return probabilities of each cell."""

    features = "rwpe"
    n_features = 16

    def __init__(self, dim: int, n_dims: int = 2):
        super().__init__(dim, n_dims)
        self.lin = nn.Linear(self.n_features, dim)

    def forward(self, h, coords, edge_index=None, features=None):
        return self.lin(features)


class LaplacianPE(PositionalEncoding):
    """LapPE: linear map of 10 Laplacian eigenvectors, signs flipped at random in training."""

    features = "lappe"
    n_features = 10

    def __init__(self, dim: int, n_dims: int = 2):
        super().__init__(dim, n_dims)
        self.lin = nn.Linear(self.n_features, dim)

    def forward(self, h, coords, edge_index=None, features=None):
        if self.training:
            sign = torch.randint(0, 2, (1, features.shape[1]), device=features.device) * 2 - 1
            features = features * sign
        return self.lin(features)


class SignNetPE(PositionalEncoding):
    """SignNet (Lim et al., 2022): ``rho([phi(v_i) + phi(-v_i)]_i)`` over Laplacian eigenvectors.

    ``phi`` is a 3-layer GIN on the spatial graph applied to each eigenvector as a node signal
    (hidden 64, 4 outputs per eigenvector); ``rho`` is a 2-layer MLP.
    """

    features = "lappe"
    n_features = 10
    needs_graph = True

    def __init__(self, dim: int, n_dims: int = 2, hidden: int = 64, phi_out: int = 4):
        super().__init__(dim, n_dims)
        self.phi = nn.ModuleList(
            [GINConv(1, hidden, hidden), GINConv(hidden, hidden, hidden), GINConv(hidden, phi_out)]
        )
        self.rho = nn.Sequential(
            nn.Linear(self.n_features * phi_out, hidden), nn.ReLU(), nn.Linear(hidden, dim)
        )

    def _phi(self, v: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.phi):
            v = layer(v, edge_index)
            if i < len(self.phi) - 1:
                v = torch.relu(v)
        return v

    def forward(self, h, coords, edge_index=None, features=None):
        v = features.unsqueeze(-1)  # (n, k, 1)
        out = self._phi(v, edge_index) + self._phi(-v, edge_index)
        return self.rho(out.flatten(1))


class CondPE(PositionalEncoding):
    """Conditional PE (CPVT with a graph convolution): ``GAT(h, A)`` on the spatial graph.

    One GAT layer (8 heads) over the group's spatial graph with self-loops, so each token's
    encoding is conditioned on its spatial neighbourhood (translation invariant, local).
    """

    needs_graph = True

    def __init__(self, dim: int, n_dims: int = 2, n_heads: int = 8, attn_dropout: float = 0.1):
        super().__init__(dim, n_dims)
        self.gat = GATConv(dim, dim, n_heads=n_heads, attn_dropout=attn_dropout)

    def forward(self, h, coords, edge_index=None, features=None):
        return self.gat(h, edge_index)


POSITIONAL_ENCODINGS: dict[str, type[PositionalEncoding]] = {
    "none": PositionalEncoding,
    "learnable": LearnablePatchPE,
    "sinusoid": SinusoidPatchPE,
    "sinusoid_coord": SinusoidCoordPE,
    "naive": NaivePE,
    "rwpe": RandomWalkPE,
    "lappe": LaplacianPE,
    "signnet": SignNetPE,
    "cond": CondPE,
}


def positional_encoding(name: str, dim: int, n_dims: int = 2) -> PositionalEncoding:
    """Build the positional encoding called ``name`` (one of :data:`POSITIONAL_ENCODINGS`).

    ``n_dims`` is the number of coordinate axes: 2 (x, y) or 3 (x, y, z). The graph-based
    encodings (``cond``, ``lappe``, ``rwpe``, ``signnet``) read the neighbour graph of the
    coordinates, which is 3-D when they are.
    """
    if name not in POSITIONAL_ENCODINGS:
        raise ValueError(f"pos_encoding={name!r} is not one of {sorted(POSITIONAL_ENCODINGS)}.")
    return POSITIONAL_ENCODINGS[name](dim, n_dims)
