import math

import pytest
import torch

from detect.ops import BoxCoder


def test_encode_by_hand():
    # P: centre (5, 5), size 10x10; G: centre (12, 14), size 20x20.
    p = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    g = torch.tensor([[2.0, 4.0, 22.0, 24.0]])
    assert torch.allclose(BoxCoder().encode(p, g), torch.tensor([[0.7, 0.9, math.log(2), math.log(2)]]))
    weighted = BoxCoder((10, 10, 5, 5)).encode(p, g)
    assert torch.allclose(weighted, torch.tensor([[7.0, 9.0, 5 * math.log(2), 5 * math.log(2)]]))


@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (10, 10, 5, 5)])
def test_round_trip(weights):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    p = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 100], dim=1)
    xy = torch.rand(50, 2, generator=g) * 100
    t = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 100], dim=1)
    coder = BoxCoder(weights)
    assert torch.allclose(coder.decode(coder.encode(p, t), p), t, atol=1e-3)


def test_decode_per_class_deltas():
    p = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 10.0, 30.0, 50.0]])
    deltas = torch.zeros(2, 3 * 4)
    deltas[0, 4:8] = torch.tensor([0.1, 0.0, 0.0, 0.0])  # class 1 of box 0 moves right by 1 px
    deltas[1, 8:12] = torch.tensor([0.0, 0.0, math.log(2), 0.0])  # class 2 of box 1 doubles width
    out = BoxCoder().decode(deltas, p)
    assert out.shape == (2, 12)
    out = out.view(2, 3, 4)
    assert torch.allclose(out[0, 0], p[0]) and torch.allclose(out[1, 0], p[1])
    assert torch.allclose(out[0, 1], torch.tensor([1.0, 0.0, 11.0, 10.0]))
    assert torch.allclose(out[1, 2], torch.tensor([0.0, 10.0, 40.0, 50.0]))


def test_decode_clamps_size_deltas():
    p = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    out = BoxCoder().decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), p)
    # exp(log(1000/16)) * 10 = 625 px, centred on (5, 5): finite, not inf.
    assert torch.allclose(out, torch.tensor([[5 - 312.5, 5 - 312.5, 5 + 312.5, 5 + 312.5]]))


def test_decode_keeps_half_dtype_and_empty_input():
    p = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    out = BoxCoder().decode(torch.zeros(1, 4, dtype=torch.float16), p)
    assert out.dtype == torch.float16 and out.tolist() == [[0, 0, 10, 10]]
    assert BoxCoder().decode(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 8)
    assert BoxCoder().encode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)


def test_bad_weights():
    with pytest.raises(ValueError, match="4 weights"):
        BoxCoder((1, 1, 1))
