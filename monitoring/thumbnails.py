"""Images at the extremes of the drifted image descriptors, for a drift check's HTML report."""

from __future__ import annotations

import pandas as pd

from training.blobs import BlobStore
from training.images import IMAGE_DESCRIPTORS, thumbnail_uri


def extreme_thumbnails(
    drifted: list[str],
    reference: pd.DataFrame,
    window: pd.DataFrame,
    stores: tuple[BlobStore, BlobStore],
    count: int = 4,
) -> dict[str, dict[str, list[str]]]:
    """Per drifted image descriptor, thumbnails of the reference and window images furthest in the
    direction the window moved (the darkest when it got darker).

    Args:
        drifted: the drifted feature columns (descriptors among them get thumbnails).
        reference: the reference profile's rows (``image`` keys and descriptor columns).
        window: the window's rows (``text`` holds the logged images' keys; descriptor columns).
        stores: where the reference's images are (the registry's) and the window's (the log's).
        count: images per side.
    """
    found: dict[str, dict[str, list[str]]] = {}
    for column in (c for c in drifted if c in IMAGE_DESCRIPTORS):
        if column not in reference.columns or column not in window.columns:
            continue
        rising = window[column].mean() >= reference[column].mean()
        sides = {
            "reference": (reference, "image", stores[0]),
            "window": (window, "text", stores[1]),
        }
        found[column] = {}
        for side, (rows, key, store) in sides.items():
            chosen = rows.dropna(subset=[column]).sort_values(column, ascending=not rising).head(count)
            found[column][side] = [
                thumbnail_uri(store.path(k).read_bytes()) for k in chosen[key] if store.path(k).is_file()
            ]
    return found
