"""Sparse encode/decode kernels: PyTorch dense references beside the fast paths."""

from saelens_lite.kernels.sparse import (
    SparsePattern,
    TopKSelection,
    dense_preacts,
    select_preacts,
    select_preacts_reference,
    sparse_decode,
    sparse_decode_reference,
    topk_encode,
    topk_select,
)

__all__ = [
    "SparsePattern",
    "dense_preacts",
    "select_preacts",
    "select_preacts_reference",
    "sparse_decode",
    "sparse_decode_reference",
    "TopKSelection",
    "topk_encode",
    "topk_select",
]
