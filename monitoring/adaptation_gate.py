"""The promotion gate of an adaptation, pure: an adaptation is trained without labels on a window
of live inputs, so besides production's test split (within its own tolerance) and the few
feedback labels there are, it is judged by label-free checks on the window's inputs it did not
adapt to (:func:`judge_adaptation`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from monitoring.feedback import stable_fraction
from monitoring.gate import GateDecision, GateNumbers, WindowNumbers
from monitoring.settings import LABEL_FREE_STRATEGIES

WORSE_ALPHA = 0.05  # an adaptation's test-split loss this unlikely by chance is refused at any size
VANISHED_SHARE = 0.25  # of a label's expected answers on the window, below which it has vanished
# Production's answers this sure (calibrated top probability) are the window's nearest thing to
# labels: the candidate may overturn about as many of them as production is expected to get wrong.
CONFIDENT = 0.9
# Fewer overturned answers are no evidence: a new domain makes production surer than it is right,
# so its expected errors there run low (self-train with 5 labels, tiles exp12 -> exp56 seed 0,
# overturned 2 of 57 where 0.2 were expected, p 0.024, and gained 0.081 macro-F1).
MIN_OVERTURNED = 3


def label_mix_distance(probabilities: np.ndarray, labels: Sequence[str], prior: Mapping[str, float]) -> float:
    """Total variation distance between the mix of predicted labels and the ``prior`` mix."""
    predicted = np.asarray(labels, dtype=object)[np.asarray(probabilities).argmax(axis=1)]
    names = set(prior) | set(labels)
    shares = {name: float(np.mean(predicted == name)) if len(predicted) else 0.0 for name in names}
    return 0.5 * sum(abs(shares[name] - prior.get(name, 0.0)) for name in names)


def vanished_labels(
    production: tuple[np.ndarray, Sequence[str]],
    candidate: tuple[np.ndarray, Sequence[str]],
    prior: Mapping[str, float],
) -> list[str]:
    """Training labels the candidate answers for fewer than a quarter of the window inputs the
    training mix expects, while production answers at least that many, and lost beyond chance:
    of the inputs whose answer moved into or out of the label, significantly more moved out
    (one label answered 2 times for 1 among 77 intents is noise, not a collapse)."""
    answers = [
        np.asarray(labels, dtype=object)[np.asarray(p).argmax(axis=1)]
        for p, labels in (production, candidate)
    ]
    counts = [Counter(a) for a in answers]
    rows = len(production[0])
    floor = {label: VANISHED_SHARE * share * rows for label, share in prior.items()}
    vanished = []
    for label in sorted(prior):
        if not 0 < floor[label] <= counts[0][label] or counts[1][label] >= floor[label]:
            continue
        moved = count_test_changes(answers[0] == label, answers[1] == label)
        if one_sided_p(moved["lost"], moved["gained"]) < WORSE_ALPHA:
            vanished.append(label)
    return vanished


def one_sided_p(lost: int, gained: int) -> float:
    """McNemar's exact one-sided p-value that ``lost`` exceeds ``gained`` by chance: under no
    difference each changed row is as likely lost as gained."""
    from scipy.stats import binomtest

    if lost + gained == 0:
        return 1.0
    return float(binomtest(lost, lost + gained, 0.5, alternative="greater").pvalue)


def split_window(
    inputs: Sequence[str], gate_share: float, keys: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """(inputs to adapt to, inputs the gate judges on): about ``gate_share`` of them held out, each
    input's side fixed by a hash of its key, so that the gate's label-free checks read inputs the
    candidate never adapted to (an adaptation fits the inputs it sees, as training fits its rows).

    ``keys``, one per input, name what an input is: an image's content key rather than the path of
    its file, which changes with the store's directory. By default an input is its own key.
    """
    keys = inputs if keys is None else keys
    sides: tuple[list[str], list[str]] = ([], [])
    for item, key in zip(inputs, keys, strict=True):
        sides[int(stable_fraction(str(key)) < gate_share)].append(item)  # 1: held out
    return sides


def overconfidence(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Mean top probability minus accuracy on labelled rows (0 without rows)."""
    if not len(correct):
        return 0.0
    return round(float(np.mean(confidence) - np.mean(np.asarray(correct, dtype=float))), 4)


def measure_window(
    production: tuple[np.ndarray, Sequence[str]],
    candidate: tuple[np.ndarray, Sequence[str]],
    prior: Mapping[str, float],
    max_mix_growth: float,
    max_confidence_fall: float,
    rewritten: np.ndarray | None = None,
    overconfident: tuple[float, float] = (0.0, 0.0),
) -> WindowNumbers:
    """Both versions' label-free numbers from their (probabilities, labels) on the same window;
    ``rewritten`` marks the inputs the candidate reads rewritten, ``overconfident`` is each one's
    :func:`overconfidence` on the test split (see :class:`WindowNumbers`)."""
    kept = np.ones(len(production[0]), dtype=bool) if rewritten is None else ~np.asarray(rewritten, bool)
    return WindowNumbers(
        rows=len(production[0]),
        production_confidence=round(float(np.max(production[0], axis=1).mean()), 4),
        candidate_confidence=round(float(np.max(candidate[0], axis=1).mean()), 4),
        production_mix_distance=round(label_mix_distance(*production, prior), 4),
        candidate_mix_distance=round(label_mix_distance(*candidate, prior), 4),
        max_mix_growth=max_mix_growth,
        max_confidence_fall=max_confidence_fall,
        vanished=vanished_labels(production, candidate, prior),
        **count_overturned(production[0][kept], candidate[0][kept]),
        rewritten=int((~kept).sum()),
        production_overconfidence=overconfident[0],
        candidate_overconfidence=overconfident[1],
    )


def count_overturned(production: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """Production's confident answers, those the candidate answers otherwise, and the number of
    them production is expected to get wrong, from both models' probabilities on the same inputs."""
    top = np.max(production, axis=1)
    sure = top >= CONFIDENT
    moved = np.argmax(production, axis=1) != np.argmax(candidate, axis=1)
    return {
        "confident": int(sure.sum()),
        "overturned": int((sure & moved).sum()),
        "expected_wrong": round(float((1 - top[sure]).sum()), 3),
    }


def overturned_beyond_chance(window: WindowNumbers) -> str | None:
    """Why the candidate overturns more of production's confident answers than production gets
    wrong beyond chance, or None: one-sided binomial test of the overturned share against the
    share production is expected to get wrong, from MIN_OVERTURNED answers on. A useful
    adaptation mends production's unsure answers; one that moves what production was sure of has
    moved the features under it.
    """
    from scipy.stats import binomtest

    if window.overturned < MIN_OVERTURNED:
        return None
    share = min(window.expected_wrong / window.confident, 1.0)
    p_value = float(binomtest(window.overturned, window.confident, share, alternative="greater").pvalue)
    if p_value >= WORSE_ALPHA:
        return None
    return (
        f"{window.overturned} of production's {window.confident} answers of >= {CONFIDENT} on the "
        f"window, where it is expected to get {window.expected_wrong:.1f} wrong (one-sided binomial "
        f"p {p_value:.3f} < {WORSE_ALPHA})"
    )


def judge_adaptation(
    numbers: GateNumbers, label_free: Collection[str] = LABEL_FREE_STRATEGIES
) -> GateDecision:
    """Promote an adaptation unless one check says it made things worse.

    In order: accuracy on production's test split drops more than the tolerance, or by any amount
    the rows that changed show to be real (:func:`significantly_worse`); the held-out
    feedback labels (when there are any) are answered worse; the predicted-label mix on the window
    moves further from the training mix than production's by more than ``max_mix_growth``, or a
    label production answers vanishes from the candidate's answers (a collapse onto few labels);
    the candidate overturns more of production's confident answers on the window than production
    is expected to get wrong, beyond chance (:func:`overturned_beyond_chance`); the estimated
    accuracy on the window (mean calibrated confidence, see :func:`window_estimates`) falls by more
    than ``max_confidence_fall``. Last, an adaptation strategy (``numbers.adaptation``) not in
    ``label_free`` ships only when the held-out feedback labels show a gain, as a retrain must
    (:func:`needs_labels`).
    """
    window = numbers.window
    assert window is not None, "an adaptation is judged on its window"
    drop = numbers.production_test_accuracy - numbers.candidate_test_accuracy
    if drop > numbers.tolerance:
        return GateDecision(
            False, f"test accuracy dropped {drop:.4f} (> tolerance {numbers.tolerance})", numbers
        )
    worse = significantly_worse(numbers.test_changes)
    if worse is not None:
        return GateDecision(False, f"test split: {worse}", numbers)
    loss = numbers.production_feedback_accuracy - numbers.candidate_feedback_accuracy
    if loss > 0:  # NaN (no labels) compares false
        return GateDecision(
            False, f"feedback accuracy fell {loss:.4f} on {numbers.feedback_gate_rows} labels", numbers
        )
    growth = window.candidate_mix_distance - window.production_mix_distance
    if growth > window.max_mix_growth:
        return GateDecision(
            False,
            f"predicted labels collapsed: the window's label mix is {window.candidate_mix_distance:.3f} "
            f"from the training mix (production {window.production_mix_distance:.3f}; "
            f"allowed growth {window.max_mix_growth})",
            numbers,
        )
    if window.vanished:
        return GateDecision(
            False,
            f"predicted labels collapsed: {', '.join(window.vanished)} (almost) no longer answered on "
            f"the window, though production answers them and the training mix expects them",
            numbers,
        )
    overturned = overturned_beyond_chance(window)
    if overturned is not None:
        return GateDecision(False, f"confident answers overturned: {overturned}", numbers)
    before, after, corrected = window_estimates(window, numbers.test_changes)
    fall = before - after
    if fall > window.max_confidence_fall:
        return GateDecision(
            False,
            f"estimated accuracy on the window fell {fall:.4f} ({before:.4f} -> {after:.4f}{corrected}; "
            f"allowed fall {window.max_confidence_fall})",
            numbers,
        )
    passed = (
        f"label-free checks passed on {window.rows} window inputs: estimated accuracy "
        f"{before:.4f} -> {after:.4f}{corrected}, label-mix distance "
        f"{window.production_mix_distance:.3f} -> {window.candidate_mix_distance:.3f}, "
        f"{window.overturned} of {window.confident} confident answers overturned; test accuracy "
        f"change {numbers.candidate_test_accuracy - numbers.production_test_accuracy:+.4f}"
    )
    unproven = needs_labels(numbers, label_free)
    if unproven is not None:
        return GateDecision(False, f"{unproven} ({passed})", numbers)
    return GateDecision(True, passed, numbers)


def vouched_for(strategy: str | None, label_free: Collection[str]) -> bool:
    """Whether the label-free checks may promote an adaptation by ``strategy`` alone (None: numbers
    that name no strategy are judged by the checks alone)."""
    return strategy is None or strategy in label_free


def needs_labels(numbers: GateNumbers, label_free: Collection[str]) -> str | None:
    """Why an adaptation whose strategy the label-free checks cannot vouch for is not shipped, or None.

    `tent` minimises the entropy the estimate reads and `dann` moves the features the confidence
    rests on: on the tiles (seeds 0-5, both shifts) 4 of the 8 of their adaptations every
    label-free check passed lost 0.029-0.048 macro-F1, where none of the 16 `self-train` and
    `bn-adapt` ones lost anything. Such a strategy ships as a retrain does, on held-out feedback
    it answers better than production.
    """
    if vouched_for(numbers.adaptation, label_free):
        return None
    gain = numbers.candidate_feedback_accuracy - numbers.production_feedback_accuracy
    if gain > 0:  # NaN (no labels) compares false
        return None
    shown = (
        "none held out"
        if numbers.feedback_gate_rows == 0
        else f"{gain:+.4f} on {numbers.feedback_gate_rows} held-out labels"
    )
    return (
        f"{numbers.adaptation} ships only when held-out feedback labels show a gain ({shown}); "
        f"the label-free checks do not see its losses"
    )


def window_estimates(window: WindowNumbers, changes: Mapping[str, int] | None) -> tuple[float, float, str]:
    """Production's and the candidate's estimated accuracy on the window, and how they were read.

    Each confidence is corrected by its version's overconfidence on the test split only when the
    candidate answered more test rows right than production: labelled rows then say its lower
    confidence is calibration, not loss (a self-trained tile model under-confident by 0.035 where
    production was over-confident by 0.060). Otherwise a fall stays a fall: `dann` on tiles lost
    0.105 of confidence on the test split with no test answer changed, and 0.030 macro-F1.
    """
    before, after = window.production_confidence, window.candidate_confidence
    if changes and changes["gained"] > changes["lost"]:
        before, after = before - window.production_overconfidence, after - window.candidate_overconfidence
        return before, after, ", corrected by the test split"
    return before, after, ""


def count_test_changes(production: np.ndarray, candidate: np.ndarray) -> dict[str, int]:
    """The rows that turned from true to false (``lost``) or back (``gained``) between two
    per-row flags: each version's correctness on the test split, or whether it answers a label."""
    production, candidate = np.asarray(production, dtype=bool), np.asarray(candidate, dtype=bool)
    return {"lost": int(np.sum(production & ~candidate)), "gained": int(np.sum(~production & candidate))}


def significantly_worse(changes: Mapping[str, int] | None) -> str | None:
    """Why the candidate is worse on the test split beyond chance, or None.

    Only the rows whose answer changed carry evidence (McNemar's exact test): under "no
    difference" each is as likely lost as gained. A tolerance alone cannot serve both sizes of test
    split: on 34 images one row is 0.03, on 1,000 texts a uniform loss of 4 points is 40 rows.
    """
    if not changes:
        return None
    lost, gained = changes["lost"], changes["gained"]
    p_value = one_sided_p(lost, gained)
    if lost <= gained or p_value >= WORSE_ALPHA:
        return None
    return f"{lost} rows turned wrong and {gained} right (paired one-sided p {p_value:.3f} < {WORSE_ALPHA})"
