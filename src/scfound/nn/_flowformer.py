"""Flow attention (Flowformer; Wu et al., ICML 2022) and a pre-LN Flowformer encoder.

Flow attention views attention as a flow network: queries are sinks, keys are sources, and the
incoming and outgoing flows are conserved. With the non-negative kernel ``phi = sigmoid`` and
``n`` tokens it costs ``O(n d^2)``, linear in the number of cells of a tissue sample:

* incoming flow ``I_i = 1 / (phi(Q_i) . sum_j phi(K_j))``,
  outgoing flow ``O_j = 1 / (phi(K_j) . sum_i phi(Q_i))``
* conserved sink ``I^_i = phi(Q_i) . sum_j phi(K_j) O_j``, conserved source
  ``O^_j = clip(phi(K_j) . sum_i phi(Q_i) I_i, -1, 1)``
* allocation ``A_i = sigmoid(I^_i)``, competition ``C_j = softmax_j(O^_j) n``
* ``out_i = A_i I_i phi(Q_i) sum_j phi(K_j)^T (C_j V_j)``

As in the reference implementation, ``eps`` is added to every kernel feature and to every flow
sum. The products are written so that no ``(n, d)``-sized temporary is made for the ``eps`` shifts
or the per-token scalars (they are applied to ``(n,)`` vectors or ``(d, d)`` summaries instead),
which is where this implementation gains its speed over the reference one.
"""

from __future__ import annotations

import torch
from torch import nn


def flow_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Flow attention of ``(heads, n, d_head)`` queries, keys and values (kernel applied inside).

    Returns
    -------
    ``(heads, n, d_head)`` attention output.

    """
    q = torch.sigmoid(q)
    k = torch.sigmoid(k)
    n_q, n_k = q.shape[-2], k.shape[-2]

    def shifted_dot(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        # (x + eps) . (s + eps) for rows of x and a per-head vector s: (h, n)
        s = s + eps
        return (x @ s.unsqueeze(-1)).squeeze(-1) + eps * s.sum(-1, keepdim=True)

    sink_in = 1.0 / shifted_dot(q, k.sum(-2))
    source_out = 1.0 / shifted_dot(k, q.sum(-2))
    # sum_j k_j * source_out_j as a (h, d) vector: (h, 1, n) @ (h, n, d)
    conserved_sink = shifted_dot(q, (source_out.unsqueeze(-2) @ k).squeeze(-2))
    conserved_source = shifted_dot(k, (sink_in.unsqueeze(-2) @ q).squeeze(-2)).clamp(-1.0, 1.0)
    allocation = torch.sigmoid(conserved_sink * (n_q / n_k))
    competition = torch.softmax(conserved_source, dim=-1) * n_k
    # kv = sum_j k_j^T (v_j c_j): scale k's rows by c_j instead of v's (same product, d x d result)
    kv = (k * competition.unsqueeze(-1)).transpose(-2, -1) @ v
    return (q @ kv) * (sink_in * allocation).unsqueeze(-1)


class FlowAttention(nn.Module):
    """Multi-head flow attention over a set of tokens.

    Parameters
    ----------
    dim
        Token width.
    n_heads
        Attention heads (``dim`` must be divisible by it).
    dropout
        Dropout on the output projection (0.01 in the reference implementation).
    eps
        Stabiliser of the flow normalisations.

    """

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.01, eps: float = 1e-6):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim={dim} is not divisible by n_heads={n_heads}.")
        self.n_heads = n_heads
        self.eps = eps
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        n, dim = x.shape
        return x.view(n, self.n_heads, dim // self.n_heads).transpose(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the ``(n, dim)`` tokens of one set."""
        q, k, v = (self._heads(proj(x)) for proj in (self.query, self.key, self.value))
        h = flow_attention(q, k, v, self.eps)
        h = h.transpose(0, 1).reshape(x.shape[0], -1)
        return self.dropout(self.out(h))


class FlowformerLayer(nn.Module):
    """Pre-LN block: ``x + Attn(LN(x))`` then ``x + FFN(LN(x))``, FFN ``d -> 2d -> d`` with GELU."""

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = FlowAttention(dim, n_heads)
        self.dropout = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, 2 * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Transform the ``(n, dim)`` tokens of one set."""
        x = x + self.dropout(self.attention(self.norm1(x)))
        return x + self.feed_forward(self.norm2(x))


class FlowformerEncoder(nn.Module):
    """A stack of :class:`FlowformerLayer` over the cells of one sample (no final norm)."""

    def __init__(self, dim: int, n_layers: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(FlowformerLayer(dim, n_heads, dropout) for _ in range(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``(n, dim)`` tokens."""
        for layer in self.layers:
            x = layer(x)
        return x
