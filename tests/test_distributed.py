"""lib/distributed.py: what the processes of a run share, in one process (the 2-process paths
run in tests/test_train.py and tests/test_evaluate.py)."""

import torch

from lib import distributed


class OneProcess:
    world_size = 1
    device = torch.device("cpu")


def test_the_shards_of_an_evaluation_take_every_item_once():
    for size, world in ((10, 3), (2, 4), (0, 2), (7, 1)):
        shards = [list(distributed.ShardSampler(size, world, rank)) for rank in range(world)]
        assert sorted(i for shard in shards for i in shard) == list(range(size))
        assert [len(s) for s in shards] == [len(distributed.ShardSampler(size, world, r))
                                            for r in range(world)]


def test_one_process_gathers_and_averages_nothing():
    rows = torch.arange(6).view(3, 2)
    assert distributed.gather_rows(OneProcess(), rows) is rows
    logs = {"a": 1.0, "b": 2.5}
    assert distributed.mean_over_ranks(OneProcess(), logs) == logs
