"""detect.ops.GroupNorm: the channels-last CPU kernel against torch.nn.functional.group_norm."""
import pytest
import torch
import torch.nn.functional as F

from detect.ops import GroupNorm, group_norm

CL = torch.channels_last


def _both(shape, groups, scale=3.0, offset=2.0, seed=0):
    """The module's output and gradients on a channels-last input, and the reference's on NCHW."""
    torch.manual_seed(seed)
    layer = GroupNorm(groups, shape[1])
    torch.nn.init.normal_(layer.weight)
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(shape) * scale + offset
    dy = torch.randn(shape)
    xr = x.clone().requires_grad_(True)
    ref = F.group_norm(xr, groups, layer.weight, layer.bias, layer.eps)
    ref_grads = torch.autograd.grad(ref, [xr, layer.weight, layer.bias], dy)
    xc = x.contiguous(memory_format=CL).requires_grad_(True)
    out = layer(xc)
    grads = torch.autograd.grad(out, [xc, layer.weight, layer.bias], dy)
    return out, grads, ref, ref_grads


@pytest.mark.parametrize("shape,groups", [
    ((2, 64, 24, 32), 32),   # MobileNetV3's 64-channel maps, 32 groups
    ((3, 72, 12, 17), 18),   # groups of 4 channels, odd sizes
    ((1, 16, 5, 3), 4),
    ((2, 8, 50, 45), 2),     # 2,250 rows an image: two of the kernels' 2,048-row chunks, the second partial
])
def test_channels_last_kernel_equals_the_reference(shape, groups):
    out, grads, ref, ref_grads = _both(shape, groups)
    assert type(out.grad_fn).__name__ == "_GroupNormNHWCBackward"  # the kernel ran, not the fallback
    assert out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for got, expected in zip(grads, ref_grads):
        # weight / bias gradients are sums over N*H*W values; the kernel sums in float64
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert grads[0].is_contiguous(memory_format=CL)


def test_a_map_far_from_zero_keeps_its_variance():
    # values 1000 +- 0.01: float32 sums (E[x^2] - E[x]^2) or an uncentred x * scale - mean * scale
    # lose the variance; the kernel sums in float64 and centres before it scales
    torch.manual_seed(0)
    x = (torch.randn(2, 32, 20, 20) * 0.01 + 1000)
    weight, bias = torch.ones(32), torch.zeros(32)
    got = group_norm(x.contiguous(memory_format=CL), 8, weight, bias)
    exact = F.group_norm(x.double(), 8, weight.double(), bias.double()).float()  # the same float32 input
    torch.testing.assert_close(got, exact, rtol=0, atol=1e-4)


def test_other_layouts_and_dtypes_take_the_library_path_unchanged():
    torch.manual_seed(0)
    layer = GroupNorm(4, 16)
    x = torch.randn(2, 16, 6, 7)
    out = layer(x)  # NCHW: exactly the library's op
    assert torch.equal(out, F.group_norm(x, 4, layer.weight, layer.bias, layer.eps))
    assert type(out.grad_fn).__name__ != "_GroupNormNHWCBackward"
    double = layer.double()(x.double().contiguous(memory_format=CL))  # float64: the library
    assert type(double.grad_fn).__name__ != "_GroupNormNHWCBackward"
    x_cl = x.contiguous(memory_format=CL)
    no_bias = group_norm(x_cl, 4, layer.weight.float(), None)  # F.group_norm's optional bias: the library
    assert torch.equal(no_bias, F.group_norm(x_cl, 4, layer.weight.float(), None))
    plain = group_norm(x_cl, 4)  # no affine parameters at all
    assert torch.equal(plain, F.group_norm(x_cl, 4))
    one_pixel = torch.randn(2, 16, 1, 1)  # both layouts at once: the library
    assert torch.equal(layer.float()(one_pixel), F.group_norm(one_pixel, 4, layer.weight, layer.bias, layer.eps))


def test_state_dict_is_torchs_groupnorm():
    plain = torch.nn.GroupNorm(4, 16)
    ours = GroupNorm(4, 16)
    ours.load_state_dict(plain.state_dict())
    assert list(ours.state_dict()) == ["weight", "bias"]
    assert isinstance(ours, torch.nn.GroupNorm)
