"""Supervised contrastive fine-tuning: a loss that pulls each label's embeddings together and away
from the other labels', and the batches it needs.

With a few examples per label, cross-entropy alone moves the encoder only as far as the head needs
to separate the training rows; the contrastive term (Khosla et al. 2020, "Supervised Contrastive
Learning") also asks the encoder to gather each label's rows, which is what the probe refitted on
its features reads. It only learns from rows that share a batch with another row of their label,
so batches are built label by label (:class:`ClassBalancedBatches`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

ROWS_PER_LABEL = 4  # rows of each label in a contrastive batch (more when the data has fewer labels)


def supervised_contrastive_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """The supervised contrastive loss of a batch (the "L_out" form of Khosla et al.).

    Each row with another row of its label in the batch contributes minus the mean log-probability,
    under a softmax of cosine similarities over all other rows, of the rows sharing its label.

    Args:
        embeddings: (batch, dim) embeddings; normalised here.
        labels: (batch,) label ids.
        temperature: divides the similarities; lower sharpens the softmax.

    Returns:
        A scalar; zero (with a gradient) when no row shares its label with another.
    """
    unit = torch.nn.functional.normalize(embeddings, dim=-1)
    self_pair = torch.eye(len(labels), dtype=torch.bool, device=unit.device)
    logits = (unit @ unit.T / temperature).masked_fill(self_pair, float("-inf"))
    log_prob = torch.log_softmax(logits, dim=1).masked_fill(self_pair, 0.0)
    positive = (labels[:, None] == labels[None, :]) & ~self_pair
    anchors = positive.any(dim=1)
    if not anchors.any():
        return unit.sum() * 0.0
    per_anchor = (log_prob * positive).sum(dim=1)[anchors] / positive.sum(dim=1)[anchors]
    return -per_anchor.mean()


class ClassBalancedBatches(Sampler[list[int]]):
    """Batches that hold each of their labels' rows together: ``rows_per_label`` rows from each of
    ``batch_size // rows_per_label`` labels, or, with fewer labels than that, every label with an
    equal share of the batch.

    Labels are drawn among those with rows not yet used this pass; a label runs out of rows before
    the others only when it has fewer, and is then drawn again from a fresh shuffle. An epoch is
    ``ceil(rows / batch_size)`` batches, the same count as a shuffled loader's, so schedules stay
    as they are.
    """

    def __init__(self, labels: np.ndarray, batch_size: int, seed: int, rows_per_label: int = ROWS_PER_LABEL):
        labels = np.asarray(labels)
        self.rows, self.batch_size = len(labels), batch_size
        self.rng = np.random.default_rng(seed)
        self.rows_of = {int(y): np.flatnonzero(labels == y) for y in np.unique(labels)}
        self.labels_per_batch = max(1, min(batch_size // rows_per_label, len(self.rows_of)))
        self.rows_per_label = max(1, batch_size // self.labels_per_batch)

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        pools: dict[int, list[int]] = {}
        for _ in range(len(self)):
            live = [y for y in self.rows_of if pools.get(y)]
            if len(live) < self.labels_per_batch:
                # too few labels left this pass: the others start again on a fresh shuffle
                for y, rows in self.rows_of.items():
                    if not pools.get(y):
                        pools[y] = self.rng.permutation(rows).tolist()
                live = list(self.rows_of)
            chosen = self.rng.choice(live, size=self.labels_per_batch, replace=False)
            batch: list[int] = []
            for y in chosen.tolist():
                take = min(self.rows_per_label, len(pools[y]))
                batch += [pools[y].pop() for _ in range(take)]
            yield batch
