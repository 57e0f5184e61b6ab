"""The Expression Transformer's torch module: gene tokens, an encoder, the Expression Decoder.

Cao (2023), PhD thesis ch. 4. A cell is the set of its non-zero genes; each gene is a learned
token (no name or sequence prior). An encoder of pre-LN transformer layers (no positional
encoding: the genes form a set) contextualises the tokens; the Expression Decoder is one
cross-attention layer in which the masked genes query the observed ones and the attention weights
are applied to the observed genes' expression-bin embeddings; an MLP on ``[decoder output; cell
maximum]`` with a softplus predicts each masked gene's log-normalised value.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from scfound.nn import log_normalize
from scfound.nn._attention import FeedForward

#: the decoders: the paper's cross-attention Expression Decoder, or the "w/o Decoder" ablation
#: (a standard encoder layer over the gene tokens plus the observed genes' expression tokens)
DECODERS = ("cross_attention", "encoder")


def multihead_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor,
    n_heads: int,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Multi-head attention with torch's ``scaled_dot_product_attention`` and a key mask.

    Parameters
    ----------
    q
        ``(B, Lq, d)`` projected queries.
    k, v
        ``(B, Lk, d)`` projected keys and values.
    key_mask
        ``(B, Lk)`` boolean, ``True`` for keys that may be attended to (padding and, in the
        decoder, masked genes are ``False``). Every row needs a ``True``.
    n_heads
        Heads; ``d`` must be a multiple of it.
    dropout
        Attention dropout.

    Returns
    -------
    ``(B, Lq, d)``: the heads concatenated (before the output projection).
    """
    B, Lq, d = q.shape
    Lk = k.shape[1]
    dh = d // n_heads
    q = q.view(B, Lq, n_heads, dh).transpose(1, 2)
    k = k.view(B, Lk, n_heads, dh).transpose(1, 2)
    v = v.view(B, Lk, n_heads, dh).transpose(1, 2)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=key_mask[:, None, None, :], dropout_p=dropout
    )
    return out.transpose(1, 2).reshape(B, Lq, d)


#: standard deviation of the initial gene-token table
EMBEDDING_INIT_STD = 0.02


class EncoderLayer(nn.Module):
    """Pre-LN transformer layer: ``H' = MSA(LN(H)) + H; H = FFN(LN(H')) + H'``.

    Parameters
    ----------
    dim
        Token width.
    n_heads
        Attention heads.
    dropout
        Dropout after the attention and in the feed-forward block.
    ffn_mult
        Width of the feed-forward block as a multiple of ``dim`` (4: 800 at ``dim=200``).
    attn_dropout
        Dropout of the attention weights (0 lets CPUs use the fused flash kernel).
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        dropout: float = 0.1,
        ffn_mult: int = 4,
        attn_dropout: float = 0.0,
    ):
        super().__init__()
        self.n_heads, self.dropout = n_heads, attn_dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, ffn_mult, dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, L, dim)`` tokens; ``valid`` ``(B, L)`` is ``False`` at padding."""
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        p = self.dropout if self.training else 0.0
        x = x + self.drop(self.out(multihead_attention(q, k, v, valid, self.n_heads, p)))
        return x + self.ff(self.norm2(x))


class ExpressionDecoder(nn.Module):
    """Cross-attention of masked genes (queries) over observed genes (keys, expression values).

    ``Q = H[masked] W_Q``, ``K = H[observed] W_K``, ``V = E[bins of observed] W_V``: the output of
    a masked gene is a mixture of the observed genes' expression embeddings, weighted by how
    related its contextual token is to theirs (thesis Fig. 4.1).

    Parameters
    ----------
    dim
        Token width.
    n_heads
        Attention heads.
    dropout
        Dropout of the attention weights.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self, h: torch.Tensor, values: torch.Tensor, observed: torch.Tensor
    ) -> torch.Tensor:
        """Decode every position of ``h`` ``(B, L, d)`` from the ``observed`` ``(B, L)`` ones.

        ``values`` ``(B, L, d)`` are the expression-bin embeddings. A cell without an observed
        gene gets NaN outputs.
        """
        p = self.dropout if self.training else 0.0
        none = ~observed.any(1)
        keys = observed | none[:, None]  # a row without keys would give NaN inside the kernel
        out = multihead_attention(self.q(h), self.k(h), self.v(values), keys, self.n_heads, p)
        out = self.out(out)
        return out.masked_fill(none[:, None, None], float("nan"))


class ExpressionTransformerModule(BaseModuleClass):
    """Masked expression-value regression over a cell's non-zero genes.

    Parameters
    ----------
    n_vocab
        Genes of the vocabulary (rows of the gene-token table).
    input_genes
        ``(n_vars,)`` vocabulary index of each registered column, ``-1`` for columns that are
        not in the vocabulary (ignored).
    n_hidden
        Token width ``d`` (paper: 200).
    n_layers
        Encoder layers (paper: 12).
    n_heads
        Attention heads of the encoder and the decoder (paper: 4).
    n_bins
        Expression bins per cell, relative to the cell's maximum (paper: 50).
    dropout
        Dropout after every attention block and in the feed-forward blocks.
    attn_dropout
        Dropout of the attention weights (default 0: on a CPU, torch's fused flash kernel runs
        only without it, several times faster than the unfused path).
    ffn_mult
        Feed-forward width as a multiple of ``n_hidden``.
    decoder
        ``"cross_attention"`` (the paper) or ``"encoder"`` (the "w/o Decoder" ablation).
    mask_rate
        Fraction of each cell's genes masked in training (at least one, at most all but one).
    max_tokens
        Genes per cell; a cell with more is subsampled at random in training and keeps its
        most expressed genes at inference (paper pads to 1100).
    target_sum
        Library size of the log-normalisation.
    """

    def __init__(
        self,
        n_vocab: int,
        input_genes: torch.Tensor,
        n_hidden: int = 200,
        n_layers: int = 12,
        n_heads: int = 4,
        n_bins: int = 50,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        ffn_mult: int = 4,
        decoder: Literal["cross_attention", "encoder"] = "cross_attention",
        mask_rate: float = 0.3,
        max_tokens: int = 1100,
        target_sum: float = 1e4,
    ):
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}.")
        if n_hidden % n_heads:
            raise ValueError(f"n_hidden ({n_hidden}) must be a multiple of n_heads ({n_heads}).")
        self.n_bins, self.mask_rate, self.max_tokens = n_bins, mask_rate, max_tokens
        self.target_sum, self.decoder_kind = target_sum, decoder
        self.register_buffer("input_genes", torch.as_tensor(input_genes, dtype=torch.long))
        self.gene_embedding = nn.Embedding(n_vocab, n_hidden)
        self.expression_embedding = nn.Embedding(n_bins, n_hidden)
        # a small initial gene table (BERT's 0.02): with PyTorch's N(0, 1) a short pre-training
        # at lr 1e-4 barely moves it, so its rows stay close to random vectors. The
        # expression-bin table keeps N(0, 1): it gives the decoder's values, and with values
        # 50 times smaller the attention logits, and so the encoder and the gene table, get
        # almost no gradient (the masked genes are then predicted from the cell maximum alone)
        nn.init.normal_(self.gene_embedding.weight, std=EMBEDDING_INIT_STD)
        self.encoder = nn.ModuleList(
            EncoderLayer(n_hidden, n_heads, dropout, ffn_mult, attn_dropout)
            for _ in range(n_layers)
        )
        self.encoder_norm = nn.LayerNorm(n_hidden)
        if decoder == "cross_attention":
            self.decoder = ExpressionDecoder(n_hidden, n_heads, attn_dropout)
        else:
            self.mask_token = nn.Parameter(torch.zeros(n_hidden))
            self.decoder = EncoderLayer(n_hidden, n_heads, dropout, ffn_mult, attn_dropout)
            self.decoder_norm = nn.LayerNorm(n_hidden)
        self.head = nn.Sequential(
            nn.Linear(n_hidden + 1, n_hidden), nn.GELU(), nn.Linear(n_hidden, 1)
        )

    # ----------------------------------------------------------------- tokens
    def bin_values(self, values: torch.Tensor, cell_max: torch.Tensor) -> torch.Tensor:
        """Bin of each value relative to its cell's maximum: ``min(floor(x k / L), k - 1)``.

        Parameters
        ----------
        values
            ``(B, L)`` non-negative log-normalised values.
        cell_max
            ``(B,)`` each cell's largest value ``L``.
        """
        scaled = values * self.n_bins / cell_max.clamp_min(1e-8)[:, None]
        return scaled.floor().clamp(0, self.n_bins - 1).long()

    def tokenize(
        self, x: torch.Tensor, query: torch.Tensor | None = None, mask: bool = False
    ) -> dict[str, torch.Tensor]:
        """A padded batch of each cell's non-zero genes, binned, and which of them are masked.

        Parameters
        ----------
        x
            ``(B, n_vars)`` counts.
        query
            ``(B, n_vars)`` boolean: genes to predict (added to the tokens, masked, whatever
            their value); the other tokens are observed.
        mask
            Mask a random ``mask_rate`` of each cell's genes (training).

        Returns
        -------
        ``columns`` (``(B, L)`` registered column), ``tokens`` (vocabulary index), ``values``
        (log-normalised), ``bins``, ``valid`` (``False`` at padding), ``masked`` and
        ``cell_max`` (``(B,)``). ``L`` is the largest number of tokens of a cell of the batch.
        """
        known = self.input_genes >= 0
        x = x * known
        xn = log_normalize(x, self.target_sum)
        present = xn > 0
        if query is not None:
            query = query.bool() & known
            present = present | query
        n_tokens = present.sum(1)
        length = int(min(max(int(n_tokens.max()), 1), self.max_tokens))
        if self.training:  # a random subset of the genes of long cells, redrawn every step
            key = torch.rand_like(xn)
        else:  # the most expressed genes (and every queried one)
            key = xn + (0.0 if query is None else query * (xn.max() + 1.0))
        key = key.masked_fill(~present, -1.0)
        top, columns = key.topk(length, dim=1)
        valid = top >= 0
        values = xn.gather(1, columns) * valid
        cell_max = xn.max(1).values
        masked = torch.zeros_like(valid)
        if query is not None:
            masked = query.gather(1, columns) & valid
        elif mask:
            n_valid = valid.sum(1)
            n_masked = (self.mask_rate * n_valid).round().clamp(min=1)
            n_masked = torch.minimum(n_masked, n_valid - 1).clamp(min=0)
            rank = torch.rand_like(values).masked_fill(~valid, 2.0).argsort(1).argsort(1)
            masked = rank < n_masked[:, None]
        tokens = self.input_genes[columns].clamp_min(0)
        return {
            "columns": columns,
            "tokens": tokens,
            "values": values,
            "bins": self.bin_values(values, cell_max),
            "valid": valid,
            "masked": masked,
            "cell_max": cell_max,
        }

    # ------------------------------------------------------------ scvi module
    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"x": tensors[REGISTRY_KEYS.X_KEY]}

    def _get_generative_input(
        self, tensors: dict[str, torch.Tensor], inference_outputs: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {k: inference_outputs[k] for k in ("h", "bins", "valid", "masked", "cell_max")}

    def encode(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Contextual gene embeddings ``(B, L, d)`` of the gene tokens (identities only)."""
        h = self.gene_embedding(tokens)
        for layer in self.encoder:
            h = layer(h, valid)
        return self.encoder_norm(h)

    @auto_move_data
    def inference(
        self, x: torch.Tensor, query: torch.Tensor | None = None, mask: bool = True
    ) -> dict[str, torch.Tensor]:
        """Tokenise and encode; ``z`` is the mean contextual embedding of each cell's genes.

        Parameters
        ----------
        x
            ``(B, n_vars)`` counts.
        query
            Genes to predict (see :meth:`tokenize`).
        mask
            Mask a random ``mask_rate`` of the genes (training and validation); prediction
            passes ``False``.
        """
        batch = self.tokenize(x, query, mask)
        h = self.encode(batch["tokens"], batch["valid"])
        weights = batch["valid"].unsqueeze(-1).to(h.dtype)
        z = (h * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return {**batch, "h": h, "z": z}

    @auto_move_data
    def generative(
        self,
        h: torch.Tensor,
        bins: torch.Tensor,
        valid: torch.Tensor,
        masked: torch.Tensor,
        cell_max: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Predicted log-normalised value ``(B, L)`` of every token from the observed ones."""
        observed = valid & ~masked
        values = self.expression_embedding(bins)
        if self.decoder_kind == "cross_attention":
            p = self.decoder(h, values, observed)
        else:  # "w/o Decoder": expression (or the mask token) added to the gene tokens
            inputs = h + torch.where(observed.unsqueeze(-1), values, self.mask_token)
            p = self.decoder_norm(self.decoder(inputs, valid))
        features = torch.cat([p, cell_max[:, None, None].expand(-1, p.shape[1], 1)], -1)
        return {"prediction": F.softplus(self.head(features)).squeeze(-1)}

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict[str, torch.Tensor],
    ) -> LossOutput:
        """Squared error on the masked non-zero values (Eq. 4.5).

        ``reconstruction_loss`` is each cell's sum over its masked genes (Eq. 4.5); ``loss`` is
        the mean over all masked genes of the batch, the same objective up to a constant factor
        (cells weighted by their number of masked genes), on a scale that does not depend on
        the batch's cell lengths. ``masked_mse`` is logged too.
        """
        masked = inference_outputs["masked"]
        error = (generative_outputs["prediction"] - inference_outputs["values"]) ** 2
        error = torch.where(masked, error, torch.zeros_like(error))
        per_cell = error.sum(1)
        mse = per_cell.sum() / masked.sum().clamp_min(1)
        return LossOutput(
            loss=mse,
            reconstruction_loss=per_cell,
            n_obs_minibatch=masked.shape[0],
            extra_metrics={"masked_mse": mse.detach()},
        )

    # -------------------------------------------------------------- prediction
    @torch.inference_mode()
    def predict_query(self, x: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Predicted log-normalised values at the ``query`` genes, ``(B, n_vars)``, else NaN.

        The queried genes join the cell's tokens as masked genes (the thesis's imputation
        protocol); the others are observed.
        """
        out = self.inference(x, query=query, mask=False)
        pred = self.generative(**{k: out[k] for k in ("h", "bins", "valid", "masked", "cell_max")})
        return _scatter(pred["prediction"], out["columns"], out["masked"], x.shape[1])

    @torch.inference_mode()
    def predict_held_out(self, x: torch.Tensor, n_folds: int = 4) -> torch.Tensor:
        """Each non-zero gene predicted from the cell's other genes, ``(B, n_vars)``, else NaN.

        The tokens of every cell are split into ``n_folds`` fixed, interleaved folds (by
        expression rank); each fold is masked in turn and predicted from the others.
        """
        out = self.inference(x, mask=False)
        valid, h = out["valid"], out["h"]
        position = torch.arange(valid.shape[1], device=valid.device)
        result = torch.full_like(x, float("nan"), dtype=h.dtype)
        for fold in range(n_folds):
            masked = valid & (position % n_folds == fold)[None, :]
            if not masked.any():
                continue
            pred = self.generative(h, out["bins"], valid, masked, out["cell_max"])["prediction"]
            part = _scatter(pred, out["columns"], masked, x.shape[1])
            result = torch.where(torch.isnan(part), result, part)
        return result


def _scatter(
    values: torch.Tensor, columns: torch.Tensor, keep: torch.Tensor, n_vars: int
) -> torch.Tensor:
    """``(B, L)`` token values at ``keep`` scattered into ``(B, n_vars)`` columns, NaN elsewhere."""
    out = torch.full((values.shape[0], n_vars + 1), float("nan"), device=values.device)
    target = torch.where(keep, columns, torch.full_like(columns, n_vars))
    out.scatter_(1, target, values.float())
    return out[:, :n_vars]
