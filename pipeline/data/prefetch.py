"""Read ahead: load the next scan file in a background thread while the current one is scored.

Loading (gzip decompression, resampling) and scoring (torch kernels) both release the GIL for most of
their time, so one loader thread hides the file reading behind the forward passes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

P = TypeVar("P")
T = TypeVar("T")
_END = object()


def prefetched(items: Iterable[P], load: Callable[[P], T], ahead: int = 1) -> Iterator[tuple[P, Future]]:
    """-> (item, future of load(item)) in order, with up to `ahead` further loads running in one background
    thread meanwhile. future.result() returns the loaded value or raises what load raised."""
    source = iter(items)
    pending: deque[tuple[P, Future]] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        for _ in range(ahead + 1):
            item = next(source, _END)
            if item is _END:
                break
            pending.append((item, pool.submit(load, item)))
        while pending:
            current = pending.popleft()
            item = next(source, _END)
            if item is not _END:
                pending.append((item, pool.submit(load, item)))
            yield current
