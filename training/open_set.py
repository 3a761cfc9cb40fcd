"""Open-set answers: an "unknown" score per input and the threshold above which a version abstains.

The score mixes the two signals that catch different failures (`benchmarks/open_set.py`): how
unsure the model is (1 - its top probability) and how far the input is from every training text
(cosine distance of the embeddings to the nearest one). Each is standardised on validation rows,
and the two are averaged. The threshold is chosen on validation rows the model never trained on:
the highest score cut that costs at most ``max_accuracy_loss`` of validation accuracy (rows the
model got right that it would abstain on). A version trained with an out-of-scope class
(``oos_label``) also abstains whenever it predicts that class.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from training.novelty import nearest_distance, unit_rows

OPEN_SET_FILE = "open_set.json"
REFERENCE_FILE = "open_set_reference.npy"  # (train rows, hidden) float16 embeddings
MIN_LABEL_ROWS = 10  # rows of each label a sampled reference keeps (all of a label with fewer)


@dataclass
class OpenSet:
    """How one version scores inputs for abstention, and its threshold."""

    threshold: float
    uncertainty_mean: float
    uncertainty_std: float
    distance_mean: float
    distance_std: float
    max_accuracy_loss: float  # what the threshold may cost on validation
    validation_rows: int
    validation_abstain_rate: float
    oos_label: str | None = None  # a trained out-of-scope class; predicting it abstains
    reference_rows: int | None = None  # training rows the distance reads (a sample past the cap)

    def scores(
        self,
        probabilities: np.ndarray,
        embeddings: np.ndarray,
        reference: np.ndarray,
        unit_reference: bool = False,
    ) -> np.ndarray:
        """Unknown scores (n,): higher is less like anything the version was trained on."""
        distance = nearest_distance(embeddings, reference, unit_reference=unit_reference)
        return self.combine(1.0 - probabilities.max(axis=1), distance)

    def combine(self, uncertainty: np.ndarray, distance: np.ndarray) -> np.ndarray:
        """The score from its two signals: each standardised, then averaged."""
        return (
            0.5 * (uncertainty - self.uncertainty_mean) / self.uncertainty_std
            + 0.5 * (distance - self.distance_mean) / self.distance_std
        )

    def save(self, directory: Path, reference: np.ndarray) -> None:
        """Write the calibration (JSON) and the training embeddings (float16) into a version."""
        (directory / OPEN_SET_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        np.save(directory / REFERENCE_FILE, reference.astype(np.float16))


def load_open_set(directory: Path) -> tuple[OpenSet, np.ndarray] | None:
    """The version's open-set calibration and its training embeddings scaled to unit norm (score
    them with ``unit_reference=True``), or None for a version without them."""
    path = directory / OPEN_SET_FILE
    if not path.is_file():
        return None
    calibration = OpenSet(**json.loads(path.read_text(encoding="utf-8")))
    # Stored column-major: the product with the queries (``queries @ reference.T``) then reads a
    # row-major matrix, which took half the time for 2-64 queries (7,002 x 384, one thread).
    return calibration, np.asfortranarray(unit_rows(np.load(directory / REFERENCE_FILE)))


def fit_open_set(
    train_embeddings: np.ndarray,
    validation_probabilities: np.ndarray,
    validation_embeddings: np.ndarray,
    validation_labels: np.ndarray,
    max_accuracy_loss: float,
    oos_label: str | None = None,
    *,
    leave_one_out: bool = False,
    groups: np.ndarray | None = None,
    reference_rows: np.ndarray | None = None,
) -> OpenSet | None:
    """Standardise both signals and choose the threshold on validation rows; None without them.

    ``train_embeddings`` is the reference the served version's distances read: every training
    row, or the sample of them ``sample_open_set_rows`` chose. With ``leave_one_out`` the
    "validation" rows are the training rows themselves, scored out of fold (cross-validated
    selection): each row's distance skips the row itself, or every row of its group when
    ``groups`` (one per training row) are given; ``reference_rows`` says which training rows
    the reference holds when it is a sample.
    """
    if len(validation_labels) < 2 or len(train_embeddings) < 2:
        return None
    uncertainty = 1.0 - validation_probabilities.max(axis=1)
    distance = nearest_distance(
        validation_embeddings,
        train_embeddings,
        exclude_self=leave_one_out,
        groups=groups,
        reference_rows=reference_rows,
    )
    open_set = OpenSet(
        threshold=float("inf"),
        uncertainty_mean=float(uncertainty.mean()),
        uncertainty_std=float(uncertainty.std()) or 1.0,
        distance_mean=float(distance.mean()),
        distance_std=float(distance.std()) or 1.0,
        max_accuracy_loss=max_accuracy_loss,
        validation_rows=len(validation_labels),
        validation_abstain_rate=0.0,
        oos_label=oos_label,
        reference_rows=len(train_embeddings),
    )
    scores = open_set.combine(uncertainty, distance)
    correct = validation_probabilities.argmax(axis=1) == validation_labels
    open_set.threshold = choose_threshold(scores, correct, max_accuracy_loss)
    open_set.validation_abstain_rate = float((scores >= open_set.threshold).mean())
    return open_set


def sample_open_set_rows(labels: np.ndarray, rows: int, seed: int) -> np.ndarray:
    """Indices (sorted) of the training rows the open-set distance reads: all of them when there
    are at most ``rows``, otherwise each label's share of ``rows`` drawn at random.

    The distance is read on every request, so its cost must not grow with the training set. A
    random sample keeps where the texts are dense, and the rows left out are then like new inputs
    to it, so thresholds chosen on them hold. Each label keeps at least ``MIN_LABEL_ROWS`` (or
    all it has), so that a rare label's inputs are not all "far from anything trained on".

    Args:
        labels: label index (n,) of each training row.
        rows: the cap.
        seed: the run's seed.
    """
    if len(labels) <= rows:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(labels):
        members = np.nonzero(labels == label)[0]
        share = max(round(rows * len(members) / len(labels)), MIN_LABEL_ROWS)
        keep.append(rng.choice(members, size=min(share, len(members)), replace=False))
    return np.sort(np.concatenate(keep))


def choose_threshold(scores: np.ndarray, correct: np.ndarray, max_accuracy_loss: float) -> float:
    """The lowest score cut whose abstentions drop at most ``max_accuracy_loss`` of correct answers.

    Abstaining on a row the model got wrong costs no accuracy; on a right one it costs 1 / rows.
    """
    order = np.argsort(-scores, kind="stable")
    lost = np.cumsum(correct[order]) / len(scores)  # accuracy lost abstaining on the top i+1 scores
    allowed = np.nonzero(lost <= max_accuracy_loss + 1e-12)[0]
    if not len(allowed):
        return float("inf")
    # Cut between the last allowed score and the next one, so that ties are not split.
    last = int(allowed[-1])
    if last + 1 < len(order) and scores[order[last + 1]] == scores[order[last]]:
        same = scores[order] == scores[order[last]]
        last = int(np.nonzero(same)[0][0]) - 1
        if last < 0:
            return float("inf")
    return float(scores[order[last]])
