"""The U-Net's CPU fast paths compute the same functions as the plain PyTorch ops they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddpm.nn.unet import GroupNorm, Upsample, _attention, _dropout, _GroupNormChannelsLast, _subpixel_weight


def test_channels_last_group_norm_forward_and_backward():
    torch.manual_seed(0)
    x = (torch.randn(2, 8, 5, 3, dtype=torch.float64) * 3 + 2).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    inputs = [t.clone().requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradcheck(lambda *a: _GroupNormChannelsLast.apply(*a, 4, 1e-6), inputs)
    ref_in = [t.clone().requires_grad_() for t in (x, w, b)]
    out, ref = _GroupNormChannelsLast.apply(*inputs, 4, 1e-6), F.group_norm(ref_in[0], 4, *ref_in[1:], 1e-6)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, ref_in, g), strict=True):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-12)


def test_group_norm_module_paths():
    torch.manual_seed(0)
    gn = GroupNorm(8, 32, eps=1e-6)
    nn.init.normal_(gn.weight)
    nn.init.normal_(gn.bias)
    x = torch.randn(3, 32, 6, 6) * 2 + 1
    ref = F.group_norm(x, 8, gn.weight, gn.bias, 1e-6)
    torch.testing.assert_close(gn(x.contiguous(memory_format=torch.channels_last)), ref, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 in, bf16 out, float32 statistics
        for fmt in (torch.contiguous_format, torch.channels_last):
            low = gn(x.bfloat16().contiguous(memory_format=fmt))
            assert low.dtype == torch.bfloat16
            torch.testing.assert_close(low.float(), ref, rtol=2e-2, atol=3e-2)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_subpixel_upsample_equals_nearest_then_conv(fmt):
    torch.manual_seed(0)
    up = Upsample(16, "nearest_conv")
    nn.init.normal_(up.conv.bias)
    x = torch.randn(2, 16, 5, 7).contiguous(memory_format=fmt).requires_grad_()
    out = up(x)
    ref = up.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    params = (x, up.conv.weight, up.conv.bias)
    for a, r in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g), strict=True):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)
    # an odd-sized skip connection takes the plain path; the kernel has the documented taps
    odd = up(x.detach(), (9, 14))
    torch.testing.assert_close(odd, up.conv(F.interpolate(x.detach(), size=(9, 14), mode="nearest")))
    w = torch.arange(9.0).view(1, 1, 3, 3)
    k = _subpixel_weight(w)[0, 0]
    taps = torch.tensor([[0.0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]])  # rows: w2, w1 + w2, w0 + w1, w0
    torch.testing.assert_close(k, taps @ w[0, 0] @ taps.T)


def test_subpixel_kernel_cache_follows_the_weights():
    up = Upsample(4, "nearest_conv").eval()
    x = torch.randn(1, 4, 3, 3)
    with torch.no_grad():
        a = up(x)
        up.conv.weight.mul_(2)  # in place: a new version of the same tensor
        b = up(x)
        torch.testing.assert_close(
            b - up.conv.bias.view(1, -1, 1, 1), 2 * (a - up.conv.bias.view(1, -1, 1, 1))
        )
        up.conv.weight = nn.Parameter(torch.zeros_like(up.conv.weight))  # a new tensor
        torch.testing.assert_close(up(x), up.conv.bias.view(1, -1, 1, 1).expand_as(a))


def test_low_precision_cpu_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 64, 32) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v)
    low = _attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=0, atol=3e-2)
    torch.testing.assert_close(_attention(q, k, v), ref)  # float32 goes to SDPA


def test_cpu_dropout():
    torch.manual_seed(0)
    drop = nn.Dropout(0.1)
    x = torch.ones(200_000)
    y = _dropout(drop, x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.005
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.9))
    yb = _dropout(drop, x.bfloat16())  # the scale is applied after the 0/1 mask, rounding once
    assert yb.dtype == torch.bfloat16 and set(yb.unique().tolist()) == {
        0.0,
        torch.tensor(1 / 0.9).bfloat16().item(),
    }
    xg = torch.randn(1000, requires_grad=True)
    out = _dropout(drop, xg)
    out.sum().backward()
    torch.testing.assert_close(xg.grad, (out != 0).float() / 0.9)
    assert _dropout(drop.eval(), x) is x or torch.equal(_dropout(drop.eval(), x), x)
