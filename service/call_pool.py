"""Model calls side by side: the parts of one batch run at once, each on its own thread.

A worker does not always get its share of the load: BentoML's workers share one listening socket,
and a keep-alive connection stays with the worker that accepted it (service/balance.py evens the
shares out, within a second or so). A worker whose batch is split into parts that run at once,
single-threaded each (ONNX Runtime and torch release the GIL while they compute), uses every core
when the other workers idle, and costs little when all are busy
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


def split_order(order: np.ndarray, chunk_size: int, calls: int) -> list[np.ndarray]:
    """Contiguous parts of ``order`` (input indices sorted by length): at most ``chunk_size`` each,
    and at least ``calls`` parts when there are as many inputs, so that every call has work."""
    if not len(order):
        return []
    parts = max(-(-len(order) // chunk_size), min(calls, len(order)))
    return np.array_split(order, parts)
