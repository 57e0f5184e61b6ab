"""ScMoFormer module: a graph transformer over cells, genes and proteins (tensors only)."""

from __future__ import annotations

import torch
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn
from torch.nn import functional as F

from scfound.nn import LinearAttention, TransformerLayer

from ..base._mudata import NORM_CLR, NORM_LOG1P_CP10K
from ..scmognn._module import BipartiteGraph, RelationConv, bipartite_graph, normalize_counts

#: positional encodings of the gene and protein nodes (spec section 4.3.3)
PE_TYPES = ("none", "lappe", "rwpe")


def table_graph(index: torch.Tensor, weight: torch.Tensor, n_cols: int) -> BipartiteGraph:
    """Mean-aggregation matrices of a padded neighbour table (row ``i`` -> its neighbours).

    ``to_cell`` averages, for each row node, its weighted neighbours; ``to_feature`` averages,
    for each neighbour node, the rows that list it (the reverse relation).
    """
    n, k = weight.shape
    keep = weight > 0
    rows = torch.arange(n, device=weight.device).unsqueeze(1).expand(n, k)[keep]
    cols = index[keep]
    order = torch.argsort(rows * n_cols + cols)
    pairs = torch.stack([rows[order], cols[order]])
    return bipartite_graph(pairs, weight[keep][order], n, n_cols)


class GPSLayer(nn.Module):
    """GraphGPS layer (Rampasek et al. 2022) over one node type, as in the ScMoFormer code.

    ``h_loc = LN(h + Drop(SAGE(h, A)))`` (local, on the prior graph; skipped without edges),
    ``h_att = LN(h + Drop(Attn(h)))`` (global linear attention over all nodes of the type),
    ``out = LN(h' + Drop(FFN(h')))`` with ``h' = h_loc + h_att`` and a 2x SELU feed-forward.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float, attn_dropout: float):
        super().__init__()
        self.local = RelationConv(dim, dim)
        self.attention = LinearAttention(dim, n_heads, dropout=attn_dropout)
        self.norm_local, self.norm_attn, self.norm_out = (nn.LayerNorm(dim) for _ in range(3))
        self.ff = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.SELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, graph: BipartiteGraph | None) -> torch.Tensor:
        """Update the ``(n_nodes, dim)`` states ``h`` on the prior ``graph`` (or none)."""
        h_att = self.norm_attn(h + self.dropout(self.attention(h)))
        if graph is None:
            mixed = h_att
        else:
            local = self.local(h, h, graph.to_cell, graph.to_cell_t)
            mixed = self.norm_local(h + self.dropout(local)) + h_att
        return self.norm_out(mixed + self.dropout(self.ff(mixed)))


class _Branches(nn.Module):
    """``LN(SELU(b))`` per branch, summed, then ``LN2(SELU(sum))`` (spec section 4.3.4)."""

    def __init__(self, dim: int, n_branches: int):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(n_branches))
        self.out = nn.LayerNorm(dim)

    def forward(self, branches: list[torch.Tensor], extra: torch.Tensor | None = None):
        total = sum(norm(F.selu(b)) for norm, b in zip(self.norms, branches, strict=True))
        if extra is not None:
            total = total + extra
        return self.out(F.selu(total))


class ScMoFormerModule(BaseModuleClass):
    """Heterogeneous graph transformer over the cells of a minibatch, all genes, all proteins.

    Nodes start from (spec section 4.2): cells, a linear map of their initial features (the
    standardised truncated SVD of log-normalised RNA, buffers set by the model); genes, a linear
    map of the expression-weighted mean of the reference cells' features (buffer
    ``gene_init``) plus one of their positional encoding; proteins, a learned embedding plus one
    of their positional encoding. Each of ``n_layers`` layers updates (spec Eq. 3.11):

    * cells: SAGE(gene -> cell) + FC(cell) + a Performer block over the minibatch's cells;
    * genes: SAGE(cell -> gene) + SAGE(protein -> gene) + a :class:`GPSLayer` on the gene graph;
    * proteins: SAGE(gene -> protein) + a :class:`GPSLayer` on the protein graph;

    there are no cell-protein edges. Every branch is ``LN(SELU(.))``-normalised, the branches
    are summed and normalised again. The prediction is a linear map of the concatenated cell
    states of all layers, the initial one included (spec section 4.3.5); the loss is the mean
    squared error on the CLR of the protein counts.

    Parameters
    ----------
    n_genes, n_proteins
        Source genes and target proteins.
    gene_key, protein_key
        Keys of their counts in the minibatch ``tensors``.
    n_hidden
        Width of every node state (authors: 512).
    n_layers
        Graph-transformer layers (authors: 3).
    n_heads
        Heads of every linear attention (authors: 8).
    n_cell_features
        Width of the initial cell and gene features (authors: 128).
    pe
        ``"none"``, ``"lappe"`` (Laplacian eigenvectors; signs flipped at random in training) or
        ``"rwpe"`` (random-walk return probabilities).
    n_pe
        Width of the positional encodings (authors: 10).
    gene_neighbors, protein_neighbors
        Widths of the prior-graph neighbour tables (0: no prior graph).
    n_links
        Width of the gene-protein link table.
    dropout, attn_dropout, edge_dropout
        Dropout of node states, of attention outputs and of cell-gene edge weights.
    cell_attention
        Whether the cells of a minibatch attend to each other (the cell transformer).
    """

    def __init__(
        self,
        n_genes: int,
        n_proteins: int,
        gene_key: str,
        protein_key: str,
        n_hidden: int = 64,
        n_layers: int = 3,
        n_heads: int = 4,
        n_cell_features: int = 64,
        pe: str = "rwpe",
        n_pe: int = 10,
        gene_neighbors: int = 0,
        protein_neighbors: int = 0,
        n_links: int = 4,
        dropout: float = 0.2,
        attn_dropout: float = 0.1,
        edge_dropout: float = 0.2,
        cell_attention: bool = True,
    ):
        super().__init__()
        if pe not in PE_TYPES:
            raise ValueError(f"positional_encoding must be one of {list(PE_TYPES)}, got {pe!r}.")
        if n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}.")
        if n_hidden % n_heads:
            raise ValueError(f"n_hidden={n_hidden} must be divisible by n_heads={n_heads}.")
        self.gene_key, self.protein_key = gene_key, protein_key
        self.n_layers, self.pe = n_layers, pe
        self.dropout, self.edge_dropout = dropout, edge_dropout
        self.cell_attention = cell_attention
        d, k = n_hidden, n_pe if pe != "none" else 0

        for name, shape in (
            ("cell_feature_loadings", (n_genes, n_cell_features)),
            ("cell_feature_mean", (n_cell_features,)),
            ("gene_init", (n_genes, n_cell_features)),
            ("gene_pe", (n_genes, k)),
            ("protein_pe", (n_proteins, k)),
            ("gene_weight", (n_genes, gene_neighbors)),
            ("protein_weight", (n_proteins, protein_neighbors)),
            ("link_weight", (n_proteins, n_links)),
        ):
            self.register_buffer(name, torch.zeros(shape))
        self.register_buffer("cell_feature_scale", torch.ones(n_cell_features))
        for name, shape in (
            ("gene_index", (n_genes, gene_neighbors)),
            ("protein_index", (n_proteins, protein_neighbors)),
            ("link_index", (n_proteins, n_links)),
        ):
            self.register_buffer(name, torch.zeros(shape, dtype=torch.long))

        self.cell_in = nn.Linear(n_cell_features, d)
        self.gene_in = nn.Linear(n_cell_features, d)
        self.protein_embedding = nn.Embedding(n_proteins, d)
        self.gene_pe_in = nn.Linear(k, d) if k else None
        self.protein_pe_in = nn.Linear(k, d) if k else None

        self.gene_to_cell, self.cell_to_gene = nn.ModuleList(), nn.ModuleList()
        self.protein_to_gene, self.gene_to_protein = nn.ModuleList(), nn.ModuleList()
        self.cell_fc, self.cell_transformer = nn.ModuleList(), nn.ModuleList()
        self.gene_gps, self.protein_gps = nn.ModuleList(), nn.ModuleList()
        self.cell_norm, self.gene_norm, self.protein_norm = (nn.ModuleList() for _ in range(3))
        for _ in range(n_layers):
            for rel in (
                self.gene_to_cell,
                self.cell_to_gene,
                self.protein_to_gene,
                self.gene_to_protein,
            ):
                rel.append(RelationConv(d, d))
            self.cell_fc.append(nn.Linear(d, d))
            self.cell_transformer.append(TransformerLayer(d, n_heads, dropout, attn_dropout))
            self.gene_gps.append(GPSLayer(d, n_heads, dropout, attn_dropout))
            self.protein_gps.append(GPSLayer(d, n_heads, dropout, attn_dropout))
            self.cell_norm.append(_Branches(d, 3 if cell_attention else 2))
            self.gene_norm.append(_Branches(d, 2))
            self.protein_norm.append(_Branches(d, 1))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear((n_layers + 1) * d, n_proteins))

    # ------------------------------------------------------------------ inputs
    def normalize_source(self, x: torch.Tensor) -> torch.Tensor:
        """Gene counts -> ``log1p`` counts per 10,000 (the cell-gene edge weights)."""
        return normalize_counts(x, NORM_LOG1P_CP10K)

    def normalize_target(self, y: torch.Tensor) -> torch.Tensor:
        """Protein counts -> CLR (the scale the head predicts)."""
        return normalize_counts(y, NORM_CLR)

    def cell_features(self, x: torch.Tensor) -> torch.Tensor:
        """Initial cell features: the standardised projection of the normalised counts."""
        proj = self.normalize_source(x) @ self.cell_feature_loadings
        return (proj - self.cell_feature_mean) * self.cell_feature_scale

    def _pe(self, pe: torch.Tensor, layer: nn.Linear | None) -> torch.Tensor | float:
        if layer is None:
            return 0.0
        if self.training and self.pe == "lappe":  # eigenvector signs are arbitrary
            signs = torch.randint(0, 2, (1, pe.shape[1]), device=pe.device) * 2 - 1
            pe = pe * signs
        return layer(pe)

    def _act(self, h: torch.Tensor) -> torch.Tensor:
        return F.dropout(F.selu(h), self.dropout, training=self.training)

    # ------------------------------------------------------------------ forward
    def forward_graph(self, x: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted CLR proteins of the ``(n_cells, n_genes)`` counts ``x``.

        Parameters
        ----------
        x
            Gene counts of the sub-graph's cells.
        query
            ``(n_cells,)`` boolean, True for cells that only read the graph: their edges send no
            message to genes and they are no key of the cell attention, so that the other cells,
            the genes and the proteins do not depend on them (inductive inference on a fixed
            context of reference cells). ``None``: every cell is part of the graph (training).
        """
        n_cells, n_genes = x.shape
        values = self.normalize_source(x)
        index = values.nonzero().T
        weight = values[index[0], index[1]]
        drop = self.edge_dropout if self.training else 0.0
        graph = bipartite_graph(index, weight, n_cells, n_genes, drop)
        if query is None:
            to_gene = graph
            mask = None
        else:
            keep = ~query[index[0]]
            to_gene = bipartite_graph(index[:, keep], weight[keep], n_cells, n_genes)
            mask = query.unsqueeze(0)
        links = table_graph(self.link_index, self.link_weight, n_genes)  # protein -> gene
        gene_graph = protein_graph = None
        if self.gene_weight.shape[1] and bool((self.gene_weight > 0).any()):
            gene_graph = table_graph(self.gene_index, self.gene_weight, n_genes)
        if self.protein_weight.shape[1] and bool((self.protein_weight > 0).any()):
            n_proteins = self.protein_weight.shape[0]
            protein_graph = table_graph(self.protein_index, self.protein_weight, n_proteins)

        h_c = self._act(self.cell_in(self.cell_features(x)))
        h_g = self._act(self.gene_in(self.gene_init) + self._pe(self.gene_pe, self.gene_pe_in))
        h_p = self._act(
            self.protein_embedding.weight + self._pe(self.protein_pe, self.protein_pe_in)
        )
        states = [h_c]
        for i in range(self.n_layers):
            cell_branches = [
                self.gene_to_cell[i](h_g, h_c, graph.to_cell, graph.to_cell_t),
                self.cell_fc[i](h_c),
            ]
            if self.cell_attention:
                attended = self.cell_transformer[i](h_c.unsqueeze(0), mask).squeeze(0)
                cell_branches.append(attended)
            gene_branches = [
                self.cell_to_gene[i](h_c, h_g, to_gene.to_feature, to_gene.to_feature_t),
                self.protein_to_gene[i](h_p, h_g, links.to_feature, links.to_feature_t),
            ]
            protein_branches = [self.gene_to_protein[i](h_g, h_p, links.to_cell, links.to_cell_t)]
            new_c = self.cell_norm[i](cell_branches)
            new_g = self.gene_norm[i](gene_branches, self.gene_gps[i](h_g, gene_graph))
            new_p = self.protein_norm[i](protein_branches, self.protein_gps[i](h_p, protein_graph))
            h_c = F.dropout(new_c, self.dropout, training=self.training)
            h_g = F.dropout(new_g, self.dropout, training=self.training)
            h_p = F.dropout(new_p, self.dropout, training=self.training)
            states.append(h_c)
        return self.head(torch.cat(states, 1))

    # ------------------------------------------------------------------ scvi-tools API
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict:
        return {"x": tensors[self.gene_key]}

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict:
        return {}

    @auto_move_data
    def inference(self, x: torch.Tensor, query: torch.Tensor | None = None) -> dict:
        """``{"prediction": CLR proteins}`` of a minibatch (see :meth:`forward_graph`)."""
        return {"prediction": self.forward_graph(x, query)}

    def generative(self) -> dict:
        """No generative part: the head is applied in :meth:`inference`."""
        return {}

    def loss(self, tensors, inference_outputs, generative_outputs) -> LossOutput:
        """Mean squared error on the CLR proteins (thesis Eq. 3.13)."""
        target = self.normalize_target(tensors[self.protein_key])
        per_cell = ((inference_outputs["prediction"] - target) ** 2).mean(1)
        mse = per_cell.mean()
        return LossOutput(
            loss=mse, reconstruction_loss=per_cell, extra_metrics={"rmse": mse.detach().sqrt()}
        )

    def sample(self, *args, **kwargs):
        """Not available: ScMoFormer is deterministic."""
        raise NotImplementedError("ScMoFormer predicts point values; there is nothing to sample.")
