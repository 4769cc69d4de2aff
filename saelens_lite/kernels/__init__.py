"""Sparse encode/decode kernels: PyTorch dense references beside the fast paths."""

from saelens_lite.kernels.selection import TopKSelection, dense_preacts, topk_encode, topk_select
from saelens_lite.kernels.sparse import (
    SparsePattern,
    select_preacts,
    select_preacts_reference,
    sparse_decode,
    sparse_decode_reference,
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
