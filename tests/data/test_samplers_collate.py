import itertools

import numpy as np
import torch

from detect.data.collate import collate_detection
from detect.data.samplers import GroupedBatchSampler, InfiniteSampler, aspect_ratio_groups


def test_grouped_batches_share_orientation_and_use_each_index_once():
    ratios = [1.5, 0.7, 1.2, 0.5, 1.0, 0.8, 1.3, 0.6, 2.0]
    groups = aspect_ratio_groups(ratios)
    assert groups == [0, 1, 0, 1, 0, 1, 0, 1, 0]
    batches = list(GroupedBatchSampler(range(9), groups, batch_size=2))
    full = [b for b in batches if len(b) == 2]
    assert [b for b in full[:3]] == [[0, 2], [1, 3], [4, 6]]
    assert all(groups[a] == groups[b] for a, b in full[:-1])
    assert sorted(i for b in batches for i in b) == list(range(9))
    assert len(GroupedBatchSampler(range(9), groups, batch_size=2)) == len(batches) == 5


def test_infinite_sampler_seeded_and_sharded():
    take = lambda s, n: list(itertools.islice(iter(s), n))
    a = take(InfiniteSampler(5, seed=1), 15)
    assert a == take(InfiniteSampler(5, seed=1), 15)
    assert a != take(InfiniteSampler(5, seed=2), 15)
    assert sorted(a[:5]) == list(range(5)) and sorted(a[5:10]) == list(range(5))  # epochs are permutations
    r0 = take(InfiniteSampler(5, seed=1, rank=0, world_size=2), 6)
    r1 = take(InfiniteSampler(5, seed=1, rank=1, world_size=2), 6)
    assert [x for pair in zip(r0, r1) for x in pair] == take(InfiniteSampler(5, seed=1), 12)


def test_infinite_sampler_feeds_grouped_batches():
    groups = [0, 1, 0, 1]
    batches = list(itertools.islice(iter(GroupedBatchSampler(InfiniteSampler(4, seed=0), groups, 2)), 10))
    assert all(groups[a] == groups[b] for a, b in batches)


def test_collate_types_and_none_passthrough():
    img = np.full((4, 6, 3), 255, np.uint8)
    t = {"boxes": np.array([[0, 0, 2, 2]], np.float32), "labels": np.array([1]), "ignore": np.array([False]),
         "image_id": 4}
    images, targets = collate_detection([(img, t), (None, {"image_id": 5, "error": "bad"})])
    assert images[0].shape == (3, 4, 6) and images[0].dtype == torch.float32 and images[0].max() == 1.0
    assert images[1] is None and targets[1]["error"] == "bad"
    assert targets[0]["boxes"].dtype == torch.float32 and targets[0]["labels"].dtype == torch.int64
    assert targets[0]["ignore"].dtype == torch.bool and targets[0]["image_id"] == 4
