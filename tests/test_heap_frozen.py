"""A stage's work runs with the objects alive before it frozen (flows/stage_run.py), and only then."""

import gc
import weakref

import pytest

from flows.stage_run import heap_frozen


def test_the_heap_is_frozen_for_the_block_only_even_when_it_fails():
    kept = [[i] for i in range(10)]  # alive across the block
    gc.unfreeze()
    with heap_frozen():
        assert gc.get_freeze_count() > 0
        made = [[i] for i in range(1000)]  # the block's own objects: collected as usual
        assert any(o is made for o in gc.get_objects())  # (frozen objects are not listed)
        assert not any(o is kept for o in gc.get_objects())
    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError), heap_frozen():
        raise RuntimeError("the stage failed")
    assert gc.get_freeze_count() == 0


def test_a_cycle_dropped_inside_the_block_is_freed_after_it():
    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    alive = weakref.ref(a)
    with heap_frozen():
        del a, b
        gc.collect()
        assert alive() is not None  # frozen: not looked at
    gc.collect()
    assert alive() is None
