"""Shared torch building blocks: linear attention, positional encodings, graph layers, decoders."""

from ._attention import LinearAttention, TransformerEncoder, TransformerLayer
from ._decoders import MLPDecoder, ZINBDecoder, nb_nll, zinb_nll
from ._flowformer import FlowAttention, FlowformerEncoder, FlowformerLayer, flow_attention
from ._graph import GATConv, GATEncoder, GINConv, knn_graph, laplacian_eigenvectors, random_walk_pe
from ._positional import (
    POSITIONAL_ENCODINGS,
    CondPE,
    PositionalEncoding,
    normalize_coords,
    positional_encoding,
    sinusoid_2d,
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
    "knn_graph",
    "laplacian_eigenvectors",
    "nb_nll",
    "normalize_coords",
    "positional_encoding",
    "random_walk_pe",
    "sinusoid_2d",
    "zinb_nll",
]
