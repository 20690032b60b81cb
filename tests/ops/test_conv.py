import pytest
import torch
import torch.nn.functional as F
from torch import nn

import detect.ops.conv as conv
from detect.ops.conv import Conv3x3, use_conv3x3


@pytest.fixture
def nnpack_calls(monkeypatch):
    if not conv.nnpack_enabled():
        pytest.skip("this PyTorch has no NNPACK")
    calls = []
    original = torch._nnpack_spatial_convolution

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", counted)
    return calls


def test_large_maps_at_inference_go_through_nnpack_with_the_same_result(nnpack_calls):
    torch.manual_seed(0)
    layer = Conv3x3(128, 64, 3, padding=1)
    x = torch.randn(2, 128, 64, 64)
    with torch.no_grad():
        out = layer(x)
        small = layer(x[:, :, :32, :32])  # 1024 cells: below MIN_PIXELS, oneDNN
    assert nnpack_calls == [(1, 128, 64, 64)] * 2  # NNPACK's single-image routine, an image at a time
    reference = F.conv2d(x, layer.weight, layer.bias, padding=1)
    assert out.shape == reference.shape
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)  # Winograd rounding, ~1e-5 relative
    assert torch.equal(small, F.conv2d(x[:, :, :32, :32], layer.weight, layer.bias, padding=1))


def test_training_uses_the_direct_convolution(nnpack_calls):
    layer = Conv3x3(128, 8, 3, padding=1)
    x = torch.randn(1, 128, 64, 64, requires_grad=True)
    layer(x).sum().backward()
    assert nnpack_calls == [] and x.grad is not None and layer.weight.grad is not None


def test_a_failing_nnpack_falls_back(monkeypatch, caplog):
    monkeypatch.setitem(conv._state, "available", True)

    def broken(*args, **kwargs):
        raise RuntimeError("NNPACK SpatialConvolution_updateOutput failed")

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", broken)
    layer = Conv3x3(128, 4, 3, padding=1)
    x = torch.randn(1, 128, 64, 64)
    with torch.no_grad():
        out = layer(x)
    assert torch.equal(out, F.conv2d(x, layer.weight, layer.bias, padding=1))
    assert conv._state["available"] is False and "NNPACK convolution failed" in caplog.text


def test_only_plain_3x3_convs_are_converted():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                          nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 3, padding=2,
                                                                                                 dilation=2))
    keys = list(model.state_dict())
    assert use_conv3x3(model) == 1
    assert [type(m) for m in model] == [Conv3x3, nn.Conv2d, nn.Conv2d, nn.Conv2d, nn.Conv2d]
    assert list(model.state_dict()) == keys
