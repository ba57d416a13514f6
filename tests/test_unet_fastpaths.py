"""The U-Net's CPU fast paths compute the same functions as the plain PyTorch ops they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddpm.nn.unet import Upsample, _attention, _dropout, _subpixel_weight


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
