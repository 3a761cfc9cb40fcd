"""Keep the garbage collector's full passes off the request path, and give a swapped-out model's
memory back to the system.

A worker holding a model tracks hundreds of thousands of objects (torch modules, the tokenizer,
the web stack) that live as long as the model does. Python's full (generation 2) collection walks
every one of them while holding the GIL: 270-320 ms per pass, about one every 20-30 s per worker
under load on 2 cores (MiniLM, concurrency 32), during which that worker answers nothing.
``gc.freeze()`` moves the objects alive after a model load into a permanent generation the
collector skips, so later passes walk only what requests leave behind.
"""

from __future__ import annotations

import ctypes
import gc
import time


def freeze_heap() -> float:
    """Collect garbage now, then exempt every surviving object from later collections.

    Frozen objects are still freed by reference counting the moment nothing refers to them; only
    reference cycles among them (hooks and wrappers can make them) outlive that, until the next
    call, which unfreezes everything first so that a swapped-out model's cycles are collected.

    Returns:
        Seconds the pass took; the calling process does nothing else meanwhile.
    """
    start = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - start


def release_free_memory() -> bool:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim``).

    After a swap, the old model's memory is freed but glibc keeps it in the worker's heap: a worker
    that held v1 and v2 for a moment stayed 70 MB (13%) larger than one that loaded v2 alone
    (MiniLM, ONNX), which reads like a leak on a dashboard. Trimming took it back.

    Returns:
        False where there is no glibc (macOS, musl): nothing was done.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    libc.malloc_trim(0)
    return True
