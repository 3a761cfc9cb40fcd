"""How far an input is from what a model was trained on: cosine distance to the nearest known text.

Used by the monitor (is the window still the kind of text the reference holds?) and by open-set
answers (abstain on inputs unlike any training text). Embeddings are what the model's head reads.
"""

from __future__ import annotations

import numpy as np

CHUNK = 1024  # query rows per matrix product: bounds the (chunk, reference) similarity block


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True).clip(min=1e-12)


def nearest_distance(
    queries: np.ndarray,
    reference: np.ndarray,
    *,
    exclude_self: bool = False,
    unit_reference: bool = False,
    groups: np.ndarray | None = None,
    reference_rows: np.ndarray | None = None,
) -> np.ndarray:
    """Cosine distance (n,) from each query row to its nearest reference row.

    Args:
        queries: (n, hidden) embeddings.
        reference: (m, hidden) embeddings.
        exclude_self: ``queries`` is ``reference`` (or holds it: ``reference_rows``); skip each
            row's match with itself (leave-one-out distances of the reference to itself).
        groups: with ``exclude_self``, each query row's group (``group_column``): skip the
            matches with every row of its group (leave-one-group-out: a part's other photos are no
            evidence that the part is known).
        reference_rows: with ``exclude_self``, the reference is ``queries[reference_rows]`` (a
            sample of them), so each query skips only the reference rows that are itself or of
            its group.
        unit_reference: the reference rows are unit-norm already (a served version's, normalised
            once at load: on the request path that saves more than the product itself costs).
    """
    q, r = unit_rows(queries), (reference if unit_reference else unit_rows(reference))
    if exclude_self:  # a query skips the reference rows that share its id: its row, or its group
        query_ids = np.arange(len(q)) if groups is None else np.asarray(groups)
        reference_ids = query_ids if reference_rows is None else query_ids[reference_rows]
    out = np.empty(len(q), dtype=np.float32)
    for start in range(0, len(q), CHUNK):
        block = q[start : start + CHUNK] @ r.T
        if exclude_self:
            block[query_ids[start : start + CHUNK, None] == reference_ids[None, :]] = -np.inf
        out[start : start + CHUNK] = 1.0 - block.max(axis=1)
    return out
