import pytest
import torch
from torch import nn

from detect.training.ema import WeightEMA


def test_average_by_hand_with_the_decay_ramp():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = WeightEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)  # decay min(0.5, 2 / 11): 1 * 2/11 + 3 * 9/11
    assert ema.weights["weight"].item() == pytest.approx(2 / 11 + 27 / 11)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema.update(model)  # decay min(0.5, 3 / 12) = 0.25
    assert ema.weights["weight"].item() == pytest.approx(0.25 * (2 / 11 + 27 / 11))
    for _ in range(20):
        ema.update(model)  # the ramp reaches 0.5: 0.5 ** k of what is left
    assert ema.weights["weight"].item() < 1e-4


def test_applied_to_swaps_the_weights_in_and_back():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = WeightEMA(model, decay=0.9)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ema.weights["0.weight"].fill_(7.0)
    with ema.applied_to(model) as m:
        assert torch.all(m[0].weight == 7.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, own[k]), k
    restored = WeightEMA(model, decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == ema.updates and torch.all(restored.weights["0.weight"] == 7.0)


def test_decay_must_be_a_fraction():
    with pytest.raises(ValueError, match="train.ema must be in"):
        WeightEMA(nn.Linear(1, 1), decay=1.0)
