"""An ordered map over worker processes with bounded memory: results come back in input order, and only
a few chunks are ever in flight, so a source of millions of items is never read ahead into memory.

Workers are spawned, not forked: stages run inside Prefect's threads, and forking a threaded process
can deadlock the child.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import islice
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _run_chunk(fn: Callable[[T], R], chunk: list[T]) -> list[R]:
    return [fn(x) for x in chunk]


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    chunk_size: int = 16,
) -> Iterator[R]:
    """`fn(x)` for each x, in order, on `workers` processes (1: in this process, no pool)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    source = iter(items)
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx)
    pending: deque[Future] = deque()

    def submit_next() -> None:
        chunk = list(islice(source, chunk_size))
        if chunk:
            pending.append(pool.submit(_run_chunk, fn, chunk))

    try:
        for _ in range(4 * workers):
            submit_next()
        while pending:
            done = pending.popleft().result()
            submit_next()
            yield from done
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
