"""Run jobs a few at a time and take their results back in input order.

A source of millions of items is never read ahead into memory: only `ahead` jobs are submitted beyond the
one whose result comes back next. The same window serves Prefect's task runners (`task.submit`) and a plain
thread pool (`ldmflow stage`, where DVC, not Prefect, runs the stage).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R", covariant=True)


class Pending(Protocol[R]):
    def result(self) -> R: ...  # a concurrent.futures.Future or a PrefectFuture


class Ready(Generic[T]):
    """A result already at hand, as a Pending (for jobs not worth submitting)."""

    def __init__(self, value: T) -> None:
        self.value = value

    def result(self) -> T:
        return self.value


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def in_order(submit: Callable[[T], Pending[R]], items: Iterable[T], ahead: int) -> Iterator[R]:
    """`submit(x).result()` for each x, in order, with at most `ahead` jobs submitted and not yet taken."""
    pending: deque[Pending[R]] = deque()
    for item in items:
        pending.append(submit(item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def map_on_threads(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """`fn(x)` for each x, in order, on `workers` threads (1: in this thread), two jobs per thread ahead."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        yield from in_order(lambda item: pool.submit(fn, item), items, 2 * workers)
