"""Model calls side by side: the parts of one batch run at once, each on its own thread.

A worker runs as many single-threaded calls at once as its share of the cores (ONNX Runtime and
torch release the GIL while they compute), so a lone worker uses every core. More calls than
that, a call per core in every worker, put more threads on the cores than they have, and served
fewer texts/s under load (``ServeSettings.model_call_count``). BentoML's workers share one
listening socket and a keep-alive connection stays with the worker that accepted it;
service/balance.py evens the workers' shares out, within a second or so
(`benchmarks/results/serve_load_balance.md`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

Part = TypeVar("Part")
Result = TypeVar("Result")


class CallPool:
    """Up to ``size`` model calls at once; a size of 1 calls in the caller's thread.

    Args:
        size: calls at once (the cores on CPU; 1 on a GPU, which wants one big call).
    """

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._executor = None
        if self.size > 1:
            self._executor = ThreadPoolExecutor(self.size, thread_name_prefix="refit-model")

    def map(self, call: Callable[[Part], Result], parts: Sequence[Part]) -> list[Result]:
        """``call`` on every part, in order; at once where there is more than one."""
        if self._executor is None or len(parts) < 2:
            return [call(part) for part in parts]
        return list(self._executor.map(call, parts))

    def close(self) -> None:
        """Let the threads end once their calls are done."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)


SEQUENTIAL = CallPool(1)


def split_batch(
    sizes: np.ndarray, chunk_size: int, calls: int, max_padding: float | None
) -> list[np.ndarray]:
    """The model calls for one batch: index arrays, each of inputs of similar size.

    Inputs are sorted by size (tokens) and cut where the next input would make a run's padding
    exceed ``max_padding`` of its real tokens: on a CPU a padded token costs as much as a real
    one, and 8 texts taken in arrival order carried 1.7 tokens per real one on BANKING77. Each
    run is then split evenly into parts of at most ``chunk_size``, the widest runs into more parts
    until there are ``calls`` (when there are as many inputs), so that every call has work.

    Args:
        sizes: (n,) each input's size, as :meth:`service.backends.Encoded.sizes` gives it.
        chunk_size: inputs per part, at most.
        calls: parts to make at least (the model calls that run at once).
        max_padding: padded tokens over real ones a run may add; None: no limit.
    """
    order = np.argsort(sizes, kind="stable")
    runs: list[np.ndarray] = []
    start, total = 0, 0
    for end, index in enumerate(order):
        total += int(sizes[index])
        if max_padding is not None and (end + 1 - start) * sizes[index] > (1 + max_padding) * total:
            runs.append(order[start:end])
            start, total = end, int(sizes[index])
    if len(order):
        runs.append(order[start:])
    counts = [-(-len(run) // chunk_size) for run in runs]
    while sum(counts) < min(calls, len(order)):
        widest = max(range(len(runs)), key=lambda i: len(runs[i]) / counts[i])
        counts[widest] += 1
    return [part for run, count in zip(runs, counts, strict=True) for part in np.array_split(run, count)]
