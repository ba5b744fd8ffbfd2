"""plan_shards: every shard equal ±1 rows, in total and in every length bin, no row lost."""
import itertools
import random

import pytest

from pipeline.shards import plan_shards


def _check(rows, num_shards):
    plan = plan_shards(rows, num_shards)
    totals = [sum(s.length for s in shard) for shard in plan]
    assert max(totals) - min(totals) <= 1
    for b, blocks in rows.items():
        per_bin = [sum(s.length for s in shard if s.bin == b) for shard in plan]
        assert max(per_bin) - min(per_bin) <= 1
        assert sum(per_bin) == sum(blocks.values())
        # every row of every (bin, block) file is taken exactly once
        for blk, n in blocks.items():
            taken = sorted(itertools.chain.from_iterable(
                range(s.start, s.start + s.length)
                for shard in plan for s in shard if (s.bin, s.block) == (b, blk)))
            assert taken == list(range(n))
    for shard in plan:  # bins ascending inside a shard, so the file is ordered by length
        bins = [s.bin for s in shard]
        assert bins == sorted(bins)


def test_plan_balances_rows_overall_and_per_bin():
    _check({0: {0: 5, 1: 3}, 1: {0: 7}, 3: {1: 1, 2: 9}}, 4)


@pytest.mark.parametrize("seed", range(20))
def test_plan_balances_random_layouts(seed):
    rng = random.Random(seed)
    # every (bin, block) file holds at least one row: a layout is never empty, so every seed
    # checks a plan
    rows = {b: {blk: rng.randint(1, 40) for blk in range(rng.randint(1, 5))}
            for b in rng.sample(range(16), rng.randint(1, 6))}
    _check(rows, rng.randint(1, 9))


def test_more_shards_than_rows_leaves_some_empty_but_balanced():
    plan = plan_shards({0: {0: 2}}, 5)
    assert sorted(sum(s.length for s in shard) for shard in plan) == [0, 0, 0, 1, 1]
