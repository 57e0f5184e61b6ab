"""ScMoGNN module: a graph network on the cell-feature graph of one modality (tensors only)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn
from torch.nn import functional as F

from scfound._constants import TARGET_SUM
from scfound.nn import log_normalize

from ..base._mudata import NORM_BINARY, NORM_CLR, NORM_LOG1P_CP10K, NORM_TFIDF

#: normalisations of the source and the target modality (see :func:`normalize_counts`)
NORMALIZATIONS = (NORM_LOG1P_CP10K, NORM_CLR, NORM_TFIDF, NORM_BINARY)


def normalize_counts(x: torch.Tensor, how: str, idf: torch.Tensor | None = None) -> torch.Tensor:
    """One modality's counts on the scale the model reads and predicts.

    Parameters
    ----------
    x
        ``(n_cells, n_features)`` raw counts.
    how
        ``"log1p_cp10k"``: ``log1p`` of counts per 10,000 (RNA); ``"clr"``: centred log-ratio
        ``log1p(x / g)`` with ``g`` the geometric mean of ``1 + x`` over the cell's features (as
        ``muon.prot.pp.clr``; proteins); ``"tfidf"``: ``log1p(1e4 * tf * idf)`` with
        ``tf = x / rowsum(x)`` and ``idf`` given (ATAC); ``"binary"``: ``x > 0`` (ATAC).
    idf
        ``(n_features,)`` inverse document frequency for ``"tfidf"``.

    Returns
    -------
    Tensor of ``x``'s shape; zero counts stay 0 under every normalisation.
    """
    if how == NORM_LOG1P_CP10K:
        return log_normalize(x, TARGET_SUM)
    if how == NORM_CLR:
        g = torch.exp(torch.log1p(x).mean(-1, keepdim=True))
        return torch.log1p(x / g)
    if how == NORM_TFIDF:
        tf = x / x.sum(-1, keepdim=True).clamp_min(1e-8)
        return torch.log1p(tf * idf * TARGET_SUM)
    if how == NORM_BINARY:
        return (x > 0).to(x.dtype)
    raise ValueError(f"unknown normalisation {how!r}; expected one of {list(NORMALIZATIONS)}.")


class _SparseMatmul(torch.autograd.Function):
    """``A @ x`` for a constant sparse ``A`` with a given transpose (no conversion in backward)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, a_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.a_t = a_t
        return torch.sparse.mm(a, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, torch.sparse.mm(ctx.a_t, grad)


def sparse_matmul(a: torch.Tensor, a_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``a @ x`` with sparse ``a`` (and its transpose ``a_t``, used for the gradient of ``x``)."""
    return _SparseMatmul.apply(a, a_t, x)


@dataclass
class BipartiteGraph:
    """The two message directions of a cell-feature graph, each with its transpose.

    ``to_cell[c, f] = e_cf / deg(c)`` and ``to_feature[f, c] = e_cf / deg(f)``, so that a sum
    over a row is the mean of the weighted neighbours (GraphSAGE's mean aggregator with edge
    weights, the authors' ``SAGEConv(aggregator='mean')``). All four are sparse CSR.
    """

    to_cell: torch.Tensor
    to_cell_t: torch.Tensor
    to_feature: torch.Tensor
    to_feature_t: torch.Tensor


def _csr(crow: torch.Tensor, col: torch.Tensor, value: torch.Tensor, shape) -> torch.Tensor:
    """Sparse CSR tensor (torch's CSR "beta" notice silenced)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, value, shape, check_invariants=False)


def _crow(degree: torch.Tensor) -> torch.Tensor:
    return torch.cat([degree.new_zeros(1), torch.cumsum(degree, 0)])


def bipartite_graph(
    index: torch.Tensor,
    value: torch.Tensor,
    n_cells: int,
    n_features: int,
    edge_dropout: float = 0.0,
) -> BipartiteGraph:
    """Degree-normalised sparse matrices of a cell-feature graph (see :class:`BipartiteGraph`).

    Parameters
    ----------
    index
        ``(2, n_edges)`` (cell, feature) pairs sorted by cell, then feature (the order of
        :meth:`torch.Tensor.nonzero` on a cells x features matrix).
    value
        ``(n_edges,)`` edge weights (the normalised values).
    n_cells, n_features
        Node counts of the two sides.
    edge_dropout
        Probability of zeroing an edge weight (survivors scaled by ``1 / (1 - p)``); degrees are
        those of the full graph, as in the reference code.
    """
    if edge_dropout > 0:
        value = F.dropout(value, edge_dropout, training=True)
    cells, feats = index
    deg_c = torch.bincount(cells, minlength=n_cells)
    deg_f = torch.bincount(feats, minlength=n_features)
    v_cell = value / deg_c.clamp_min(1).to(value.dtype)[cells]
    v_feat = value / deg_f.clamp_min(1).to(value.dtype)[feats]
    order = torch.argsort(feats, stable=True)
    crow_c, crow_f, cells_f = _crow(deg_c), _crow(deg_f), cells[order]
    return BipartiteGraph(
        to_cell=_csr(crow_c, feats, v_cell, (n_cells, n_features)),
        to_cell_t=_csr(crow_f, cells_f, v_cell[order], (n_features, n_cells)),
        to_feature=_csr(crow_f, cells_f, v_feat[order], (n_features, n_cells)),
        to_feature_t=_csr(crow_c, feats, v_feat, (n_cells, n_features)),
    )


class RelationConv(nn.Module):
    """One relation of a heterogeneous graph: ``W_root x_i + W_rel sum_j a_ij x_j + b``.

    With the degree-normalised weights of :func:`bipartite_graph` this is the SAGE-mean
    convolution with edge weights (``torch_geometric.nn.GraphConv`` with a mean aggregator); the
    neighbour transform is applied before the sparse product, which then runs at the output
    width.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.lin_rel = nn.Linear(in_dim, out_dim)
        self.lin_root = nn.Linear(in_dim, out_dim, bias=False)

    def forward(
        self, x_src: torch.Tensor, x_dst: torch.Tensor, adj: torch.Tensor, adj_t: torch.Tensor
    ) -> torch.Tensor:
        """Messages of ``x_src`` (rows of ``adj_t``) to ``x_dst`` (rows of ``adj``)."""
        rel = sparse_matmul(adj, adj_t, x_src @ self.lin_rel.weight.T) + self.lin_rel.bias
        return rel + self.lin_root(x_dst)


class ScMoGNNModule(BaseModuleClass):
    """Heterogeneous graph network over cells and source features, with a linear target head.

    Node states start from a learned embedding per feature and one learned vector shared by all
    cells (the thesis' ``X_cell = 0``). Each of ``n_layers`` layers passes messages along three
    relations, one :class:`RelationConv` each (``W_root x_i + W_rel sum_j a_ij x_j`` with the
    degree-normalised weights of :func:`bipartite_graph`, i.e. the SAGE-mean convolution of
    the authors' code): feature -> cell, cell -> feature and, when a
    feature graph is given, feature -> feature. Each message is group-normalised; feature nodes
    mix the two messages as ``(1 - alpha) * cell + alpha * feature`` (thesis Eq. 2.12), then
    GELU and dropout. From the second layer on, a node's input is its state concatenated with its
    initial state (the "initial residual"). The readout is a softmax-weighted sum of the cell
    states of all layers (Eq. 2.13-2.14) and a linear head predicts the target.

    Parameters
    ----------
    n_source, n_target
        Features of the source and of the target modality.
    source_key, target_key
        Keys of their counts in the minibatch ``tensors``.
    source_normalization, target_normalization
        See :func:`normalize_counts`.
    n_hidden
        Width of every node state.
    n_layers
        Graph layers (thesis: 4 for prediction).
    alpha
        Weight of feature -> feature messages on feature nodes (thesis: 0.5).
    dropout
        Dropout on node states.
    edge_dropout
        Dropout on cell-feature edge weights during training.
    n_groups
        Groups of the GroupNorm (authors: 4).
    max_neighbors
        Width of the feature-graph neighbour table (0: no feature graph).
    n_cell_features
        Width of the initial cell features: a projection of the normalised source, fixed
        (buffers ``cell_feature_loadings``, ``cell_feature_mean``, ``cell_feature_scale``) and
        set by the model from the reference (0: cells start from the shared vector only).
    n_labels
        Cell types of a classification head on the embedding (0: none). With labels, the loss
        adds ``label_weight`` times their cross-entropy (the thesis' supervised joint
        embedding, Eq. 2.19-2.20).
    labels_key
        Key of the integer labels in the minibatch ``tensors``.
    label_weight
        Weight of the cross-entropy.
    """

    def __init__(
        self,
        n_source: int,
        n_target: int,
        source_key: str,
        target_key: str,
        source_normalization: str = NORM_LOG1P_CP10K,
        target_normalization: str = NORM_CLR,
        n_hidden: int = 64,
        n_layers: int = 4,
        alpha: float = 0.5,
        dropout: float = 0.2,
        edge_dropout: float = 0.3,
        n_groups: int = 4,
        max_neighbors: int = 0,
        n_cell_features: int = 0,
        n_labels: int = 0,
        labels_key: str = "labels",
        label_weight: float = 1.0,
    ):
        super().__init__()
        for name, how in (
            ("source_normalization", source_normalization),
            ("target_normalization", target_normalization),
        ):
            if how not in NORMALIZATIONS:
                raise ValueError(f"{name} must be one of {list(NORMALIZATIONS)}, got {how!r}.")
        if n_hidden % n_groups:
            raise ValueError(f"n_hidden={n_hidden} must be divisible by n_groups={n_groups}.")
        if n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}.")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")
        self.source_key, self.target_key = source_key, target_key
        self.source_normalization = source_normalization
        self.target_normalization = target_normalization
        self.n_layers, self.alpha = n_layers, alpha
        self.dropout, self.edge_dropout = dropout, edge_dropout
        self.has_feature_graph = max_neighbors > 0
        self.n_cell_features = n_cell_features
        self.labels_key, self.label_weight = labels_key, label_weight
        self.classifier = nn.Linear(n_hidden, n_labels) if n_labels else None

        self.feature_embedding = nn.Embedding(n_source, n_hidden)
        self.cell_embedding = nn.Parameter(torch.randn(n_hidden) * 0.1)
        self.to_cell, self.to_feature, self.feature_feature = (nn.ModuleList() for _ in range(3))
        self.norm_cell, self.norm_feature, self.norm_pathway = (nn.ModuleList() for _ in range(3))
        for layer in range(n_layers):
            width = n_hidden if layer == 0 else 2 * n_hidden
            self.to_cell.append(RelationConv(width, n_hidden))
            self.to_feature.append(RelationConv(width, n_hidden))
            self.norm_cell.append(nn.GroupNorm(n_groups, n_hidden))
            self.norm_feature.append(nn.GroupNorm(n_groups, n_hidden))
            if self.has_feature_graph:
                self.feature_feature.append(RelationConv(width, n_hidden))
                self.norm_pathway.append(nn.GroupNorm(n_groups, n_hidden))
        self.layer_weights = nn.Parameter(torch.zeros(n_layers))
        self.head = nn.Linear(n_hidden, n_target)
        self.register_buffer(
            "neighbor_index", torch.zeros(n_source, max_neighbors, dtype=torch.long)
        )
        self.register_buffer("neighbor_weight", torch.zeros(n_source, max_neighbors))
        self.register_buffer("cell_feature_loadings", torch.zeros(n_source, n_cell_features))
        self.register_buffer("cell_feature_mean", torch.zeros(n_cell_features))
        self.register_buffer("cell_feature_scale", torch.ones(n_cell_features))
        self.cell_input = nn.Linear(n_cell_features, n_hidden) if n_cell_features else None
        self.register_buffer("source_idf", torch.ones(n_source))
        self.register_buffer("target_idf", torch.ones(n_target))

    # ------------------------------------------------------------------ graph pieces
    def normalize_source(self, x: torch.Tensor) -> torch.Tensor:
        """Source counts -> edge weights of the cell-feature graph."""
        return normalize_counts(x, self.source_normalization, self.source_idf)

    def normalize_target(self, y: torch.Tensor) -> torch.Tensor:
        """Target counts -> the scale the head predicts."""
        return normalize_counts(y, self.target_normalization, self.target_idf)

    def edges(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(index, value)`` of the cell-feature edges of a dense minibatch of source counts."""
        values = self.normalize_source(x)
        index = values.nonzero().T
        return index, values[index[0], index[1]]

    def _feature_adjacency(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The feature graph (mean over neighbours) as sparse CSR, and its transpose."""
        weight = self.neighbor_weight
        n, k = weight.shape
        keep = weight > 0
        rows = torch.arange(n, device=weight.device).unsqueeze(1).expand(n, k)[keep]
        cols = self.neighbor_index[keep]
        deg = keep.sum(1)
        value = weight[keep] / deg.clamp_min(1).to(weight.dtype)[rows]
        order = torch.argsort(cols, stable=True)
        adj = _csr(_crow(deg), cols, value, (n, n))
        adj_t = _csr(_crow(torch.bincount(cols, minlength=n)), rows[order], value[order], (n, n))
        return adj, adj_t

    def cell_features(self, x: torch.Tensor) -> torch.Tensor | None:
        """Initial cell features: the standardised projection of the normalised source.

        ``None`` when the module has none (``n_cell_features=0``).
        """
        if self.cell_input is None:
            return None
        proj = self.normalize_source(x) @ self.cell_feature_loadings
        return (proj - self.cell_feature_mean) * self.cell_feature_scale

    def _initial_states(
        self, n_cells: int, cell_features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h_feature = F.leaky_relu(self.feature_embedding.weight)
        h_cell = self.cell_embedding.expand(n_cells, -1)
        if self.cell_input is not None and cell_features is not None:
            h_cell = h_cell + self.cell_input(cell_features)
        return h_feature, F.leaky_relu(h_cell)

    def _activate(self, h: torch.Tensor) -> torch.Tensor:
        return F.dropout(F.gelu(h), self.dropout, training=self.training)

    # ------------------------------------------------------------------ propagation
    def propagate(
        self,
        index: torch.Tensor,
        value: torch.Tensor,
        n_cells: int,
        cell_features: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run every layer on the graph of ``n_cells`` cells and all source features.

        ``cell_features`` are the cells' initial features (:meth:`cell_features`), if any.

        Returns
        -------
        ``(cell_states, feature_inputs)``: the cell states after each layer, and the feature
        inputs of each layer (what cells outside this graph read, see :meth:`read_features`).
        """
        n_features = self.feature_embedding.num_embeddings
        graph = bipartite_graph(
            index, value, n_cells, n_features, self.edge_dropout if self.training else 0.0
        )
        pathway = self._feature_adjacency() if self.has_feature_graph else None
        f0, c0 = self._initial_states(n_cells, cell_features)
        h_f, h_c = f0, c0
        cell_states, feature_inputs = [], []
        for layer in range(self.n_layers):
            x_f = h_f if layer == 0 else torch.cat([h_f, f0], 1)
            x_c = h_c if layer == 0 else torch.cat([h_c, c0], 1)
            feature_inputs.append(x_f)
            m_c = self.to_cell[layer](x_f, x_c, graph.to_cell, graph.to_cell_t)
            m_cell = self.to_feature[layer](x_c, x_f, graph.to_feature, graph.to_feature_t)
            h_c = self._activate(self.norm_cell[layer](m_c))
            m_cell = self.norm_feature[layer](m_cell)
            if pathway is not None:
                m_path = self.feature_feature[layer](x_f, x_f, *pathway)
                m_path = self.norm_pathway[layer](m_path)
                m_cell = (1 - self.alpha) * m_cell + self.alpha * m_path
            h_f = self._activate(m_cell)
            cell_states.append(h_c)
        return cell_states, feature_inputs

    def propagate_in_chunks(self, chunks: Callable[[], Iterable[torch.Tensor]]) -> list:
        """Feature inputs of every layer on the graph of all cells, one chunk of cells at a time.

        The same values as :meth:`propagate` without edge dropout (evaluation), in memory that
        grows with the chunk size and ``n_cells x n_hidden``, not with the edges of all cells:
        a cell's state needs only its own edges and the feature states of the layer before, and
        a feature's message is a sum over cells, accumulated chunk by chunk and divided by the
        feature's degree over all cells at the end.

        Parameters
        ----------
        chunks
            Called once per layer (and once more for the initial states); each call yields the
            ``(n_chunk, n_source)`` source counts of consecutive chunks of cells, the same chunks
            in the same order every time.

        Returns
        -------
        The feature inputs of each layer (see :meth:`propagate`).
        """
        f0 = F.leaky_relu(self.feature_embedding.weight)
        c0 = [self._initial_states(len(x), self.cell_features(x))[1] for x in chunks()]
        h_c, h_f = list(c0), f0
        n_features = f0.shape[0]
        pathway = self._feature_adjacency() if self.has_feature_graph else None
        feature_inputs = []
        for layer in range(self.n_layers):
            x_f = h_f if layer == 0 else torch.cat([h_f, f0], 1)
            feature_inputs.append(x_f)
            conv = self.to_feature[layer]
            total = x_f.new_zeros(n_features, conv.lin_rel.out_features)
            degree = x_f.new_zeros(n_features)
            for i, x in enumerate(chunks()):
                index, value = self.edges(x)
                x_c = h_c[i] if layer == 0 else torch.cat([h_c[i], c0[i]], 1)
                graph = bipartite_graph(index, value, len(x), n_features)
                m_c = self.to_cell[layer](x_f, x_c, graph.to_cell, graph.to_cell_t)
                h_c[i] = self._activate(self.norm_cell[layer](m_c))
                # un-normalised feature messages of this chunk: sum_c e_cf (W x_c)
                weights = torch.sparse_coo_tensor(index.flip(0), value, (n_features, len(x)))
                total += torch.sparse.mm(weights, x_c @ conv.lin_rel.weight.T)
                degree += torch.bincount(index[1], minlength=n_features).to(degree.dtype)
            m_cell = total / degree.clamp_min(1).unsqueeze(1) + conv.lin_rel.bias
            m_cell = self.norm_feature[layer](m_cell + conv.lin_root(x_f))
            if pathway is not None:
                m_path = self.norm_pathway[layer](self.feature_feature[layer](x_f, x_f, *pathway))
                m_cell = (1 - self.alpha) * m_cell + self.alpha * m_path
            h_f = self._activate(m_cell)
        return feature_inputs

    def read_features(
        self,
        index: torch.Tensor,
        value: torch.Tensor,
        n_cells: int,
        feature_inputs: list,
        cell_features: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Cell states of cells outside the graph, from the graph's feature states.

        A cell's state depends only on its own edges and on the feature states, so cells that
        read the feature states of the training graph never change them: predictions of a
        query do not depend on the other query cells.
        """
        n_features = self.feature_embedding.num_embeddings
        graph = bipartite_graph(index, value, n_cells, n_features)
        _, c0 = self._initial_states(n_cells, cell_features)
        h_c, cell_states = c0, []
        for layer, x_f in enumerate(feature_inputs):
            x_c = h_c if layer == 0 else torch.cat([h_c, c0], 1)
            m_c = self.to_cell[layer](x_f, x_c, graph.to_cell, graph.to_cell_t)
            h_c = self._activate(self.norm_cell[layer](m_c))
            cell_states.append(h_c)
        return cell_states

    def readout(self, cell_states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding, prediction)``: the layer-weighted cell state and the linear head."""
        w = torch.softmax(self.layer_weights, 0)
        z = sum(w[i] * h for i, h in enumerate(cell_states))
        return z, self.head(z)

    # ------------------------------------------------------------------ scvi-tools API
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict:
        return {"x": tensors[self.source_key]}

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict:
        return {}

    @auto_move_data
    def inference(self, x: torch.Tensor, feature_inputs: list | None = None) -> dict:
        """Predict the target of a minibatch of cells.

        Parameters
        ----------
        x
            ``(n_cells, n_source)`` source counts.
        feature_inputs
            Feature inputs of a graph built beforehand (:meth:`propagate`); ``None``: the
            minibatch is the graph (training).

        Returns
        -------
        ``{"z": embedding, "prediction": target on its normalised scale}``.
        """
        index, value = self.edges(x)
        features = self.cell_features(x)
        if feature_inputs is None:
            cell_states, _ = self.propagate(index, value, x.shape[0], features)
        else:
            cell_states = self.read_features(index, value, x.shape[0], feature_inputs, features)
        z, prediction = self.readout(cell_states)
        out = {"z": z, "prediction": prediction}
        if self.classifier is not None:
            out["logits"] = self.classifier(z)
        return out

    def generative(self) -> dict:
        """No generative part: the head is applied in :meth:`inference`."""
        return {}

    def loss(self, tensors, inference_outputs, generative_outputs) -> LossOutput:
        """Mean squared error on the normalised target (the thesis' RMSE, Eq. 2.15, squared).

        With a classification head, plus ``label_weight`` times the cross-entropy of the labels.
        """
        target = self.normalize_target(tensors[self.target_key])
        per_cell = ((inference_outputs["prediction"] - target) ** 2).mean(1)
        mse = per_cell.mean()
        metrics = {"rmse": mse.detach().sqrt()}
        loss = mse
        if self.classifier is not None and self.labels_key in tensors:
            labels = tensors[self.labels_key].reshape(-1).long()
            ce = F.cross_entropy(inference_outputs["logits"], labels)
            loss = loss + self.label_weight * ce
            metrics["label_cross_entropy"] = ce.detach()
        return LossOutput(loss=loss, reconstruction_loss=per_cell, extra_metrics=metrics)

    def sample(self, *args, **kwargs):
        """Not available: ScMoGNN is deterministic."""
        raise NotImplementedError("ScMoGNN predicts point values; there is nothing to sample.")
