"""Linear-complexity self-attention (Performer FAVOR+) and a pre-LN transformer encoder.

Pure torch: no ``performer_pytorch``. The FAVOR+ kernel (Choromanski et al., ICLR 2021) approximates
softmax attention with positive orthogonal random features, so a sequence of ``n`` cell tokens costs
``O(n)`` time and memory instead of ``O(n^2)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def orthogonal_random_features(n_features: int, dim: int, generator=None) -> torch.Tensor:
    """Draw an ``(n_features, dim)`` block-orthogonal Gaussian projection (FAVOR+ ORF)."""
    blocks = []
    for _ in range(math.ceil(n_features / dim)):
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
        blocks.append(q.T)
    w = torch.cat(blocks)[:n_features]
    norms = torch.randn(n_features, dim, generator=generator).norm(dim=1, keepdim=True)
    return w * norms


def favor_features(
    x: torch.Tensor,
    projection: torch.Tensor,
    is_query: bool,
    padding: torch.Tensor | None = None,
) -> torch.Tensor:
    """Positive random features ``phi(x)`` of FAVOR+ for queries or keys.

    Parameters
    ----------
    x
        ``(..., n, d_head)`` queries or keys.
    projection
        ``(m, d_head)`` random projection.
    is_query
        Queries are stabilised per row, keys with a global maximum (as in the Performer paper), so
        that the normalisation cancels in the attention ratio.
    padding
        ``(batch, n)`` boolean, True for padding keys: their features are zero and they do not
        enter the key stabiliser.
    """
    d = x.shape[-1]
    x = x * d**-0.25
    proj = x @ projection.T  # (..., n, m)
    sq = 0.5 * (x**2).sum(-1, keepdim=True)
    if is_query:
        stab = proj.amax(dim=-1, keepdim=True).detach()
        return torch.exp(proj - sq - stab) + 1e-6
    pad = None if padding is None else padding[:, None, :, None]
    masked = proj if pad is None else proj.masked_fill(pad, -torch.inf)
    stab = masked.amax(dim=(-1, -2), keepdim=True).detach()
    feats = torch.exp(proj - sq - stab) + 1e-6
    return feats if pad is None else feats.masked_fill(pad, 0.0)


class LinearAttention(nn.Module):
    """Multi-head self-attention with the FAVOR+ linear kernel.

    Parameters
    ----------
    dim
        Model width.
    n_heads
        Number of heads; ``dim`` must be divisible by it.
    n_features
        Random features per head (default ``int(d_head * ln(d_head))``, the Performer default).
    dropout
        Dropout on the attention output.
    redraw_interval
        Redraw the random projection every this many training calls (0 = never). Evaluation always
        uses the current projection, so inference is deterministic.

    """

    def __init__(
        self,
        dim: int,
        n_heads: int = 8,
        n_features: int | None = None,
        dropout: float = 0.0,
        redraw_interval: int = 1000,
    ):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim={dim} must be divisible by n_heads={n_heads}.")
        self.n_heads = n_heads
        self.d_head = dim // n_heads
        self.n_features = n_features or max(int(self.d_head * math.log(self.d_head)), 8)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.redraw_interval = redraw_interval
        self.register_buffer(
            "projection", orthogonal_random_features(self.n_features, self.d_head), persistent=True
        )
        self.register_buffer("_calls", torch.zeros((), dtype=torch.long), persistent=False)

    @torch.no_grad()
    def redraw(self) -> None:
        """Draw a new random projection."""
        self.projection.copy_(
            orthogonal_random_features(self.n_features, self.d_head).to(self.projection)
        )

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attend over the token axis.

        Parameters
        ----------
        x
            ``(n, dim)`` or ``(batch, n, dim)`` tokens.
        key_padding_mask
            ``(batch, n)`` boolean, True where a token is padding (ignored as key).

        """
        if self.training and self.redraw_interval:
            if int(self._calls) % self.redraw_interval == 0 and int(self._calls) > 0:
                self.redraw()
            self._calls += 1
        squeeze = x.dim() == 2
        if squeeze:
            x = x.unsqueeze(0)
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        qf = favor_features(q, self.projection, is_query=True)  # (b, h, n, m)
        kf = favor_features(k, self.projection, is_query=False, padding=key_padding_mask)
        kv = torch.einsum("bhnm,bhnd->bhmd", kf, v)
        normaliser = torch.einsum("bhnm,bhm->bhn", qf, kf.sum(dim=2)).clamp_min(1e-6)
        out = torch.einsum("bhnm,bhmd->bhnd", qf, kv) / normaliser.unsqueeze(-1)
        out = out.transpose(1, 2).reshape(b, n, -1)
        out = self.dropout(self.out(out))
        return out.squeeze(0) if squeeze else out


class FeedForward(nn.Sequential):
    """Position-wise MLP ``Linear(d, 4d) - GELU - Dropout - Linear(4d, d) - Dropout``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__(
            nn.Linear(dim, mult * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mult * dim, dim),
            nn.Dropout(dropout),
        )


class TransformerLayer(nn.Module):
    """Pre-LN block (SpaFormer Eq. 3-4): ``H' = MSA(LN(H)) + H; H = MLP(LN(H')) + H'``."""

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0, attn_dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = LinearAttention(dim, n_heads, dropout=attn_dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Apply the block."""
        x = x + self.attn(self.norm1(x), key_padding_mask)
        return x + self.ff(self.norm2(x))


class TransformerEncoder(nn.Module):
    """A stack of pre-LN linear-attention blocks followed by a final LayerNorm."""

    def __init__(
        self, dim: int, n_layers: int, n_heads: int, dropout: float = 0.0, attn_dropout: float = 0.0
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(dim, n_heads, dropout, attn_dropout) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode a ``(n, dim)`` or ``(batch, n, dim)`` sequence."""
        for layer in self.layers:
            x = layer(x, key_padding_mask)
        return self.norm(x)
