"""Shared torch building blocks: attention, positional encodings, graphs, decoders, scaling."""

from ._attention import LinearAttention, TransformerEncoder, TransformerLayer
from ._decoders import MLPDecoder, ZINBDecoder, nb_nll, zinb_nll
from ._flowformer import FlowAttention, FlowformerEncoder, FlowformerLayer, flow_attention
from ._graph import (
    GATConv,
    GATEncoder,
    GINConv,
    knn_adjacency,
    knn_graph,
    knn_indices,
    laplacian_eigenvectors,
    random_walk_pe,
)
from ._normalize import log_normalize
from ._positional import (
    POSITIONAL_ENCODINGS,
    CondPE,
    PositionalEncoding,
    normalize_coords,
    positional_encoding,
    sinusoid_2d,
    sinusoid_3d,
)

__all__ = [
    "POSITIONAL_ENCODINGS",
    "CondPE",
    "FlowAttention",
    "FlowformerEncoder",
    "FlowformerLayer",
    "GATConv",
    "GATEncoder",
    "GINConv",
    "LinearAttention",
    "MLPDecoder",
    "PositionalEncoding",
    "TransformerEncoder",
    "TransformerLayer",
    "ZINBDecoder",
    "flow_attention",
    "knn_adjacency",
    "knn_graph",
    "knn_indices",
    "laplacian_eigenvectors",
    "log_normalize",
    "nb_nll",
    "normalize_coords",
    "positional_encoding",
    "random_walk_pe",
    "sinusoid_2d",
    "sinusoid_3d",
    "zinb_nll",
]
