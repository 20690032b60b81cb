import torch

from detect.ops import BalancedSampler


def labels(pos, neg, ignore=0):
    return torch.tensor([1] * pos + [0] * neg + [-1] * ignore, dtype=torch.int8)


def test_counts_at_fraction():
    lab = labels(10, 100, 5)
    pos, neg = BalancedSampler(16, 0.25)(lab)
    assert (pos.numel(), neg.numel()) == (4, 12)
    assert (lab[pos] == 1).all() and (lab[neg] == 0).all()
    assert len(set(pos.tolist())) == 4 and len(set(neg.tolist())) == 12


def test_few_positives_filled_with_negatives():
    pos, neg = BalancedSampler(16, 0.25)(labels(2, 100))
    assert (pos.numel(), neg.numel()) == (2, 14)


def test_both_short_and_ignore_never_sampled():
    lab = labels(1, 3, 50)
    pos, neg = BalancedSampler(256, 0.5)(lab)
    assert sorted(pos.tolist()) == [0] and sorted(neg.tolist()) == [1, 2, 3]


def test_nothing_to_sample():
    pos, neg = BalancedSampler(8, 0.5)(labels(0, 0, 4))
    assert pos.numel() == 0 and neg.numel() == 0


def test_seeded_generator_is_reproducible():
    lab = labels(50, 500)
    a = BalancedSampler(64, 0.25)(lab, generator=torch.Generator().manual_seed(3))
    b = BalancedSampler(64, 0.25)(lab, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
