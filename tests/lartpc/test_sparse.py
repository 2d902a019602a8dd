"""Sparse convolutions against dense torch convolutions on random sparse inputs (forward and gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlfastsim.lartpc.sparse import (
    SparseBatchNorm,
    SparseTensor,
    StridedConv3d,
    SubmanifoldConv3d,
    TransposedConv3d,
    batch_sparse,
    submanifold_map,
)

SIZE = (9, 10, 11)


def random_sparse(seed: int, cin: int = 3, occupancy: float = 0.08, batch: int = 2) -> SparseTensor:
    g = torch.Generator().manual_seed(seed)
    coords, feats = [], []
    for _ in range(batch):
        mask = torch.rand(SIZE, generator=g) < occupancy
        c = mask.nonzero()
        coords.append(c)
        feats.append(torch.randn(c.shape[0], cin, generator=g, dtype=torch.float64))
    return batch_sparse(coords, feats, SIZE)


def at_sites(dense: torch.Tensor, x: SparseTensor) -> torch.Tensor:
    c = x.coords
    return dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]


def grads(loss: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("kernel", [3, (1, 3, 3), (3, 1, 5)])
def test_submanifold_equals_dense_conv3d(kernel) -> None:
    x = random_sparse(0)
    conv = SubmanifoldConv3d(3, 4, kernel, bias=True).double()
    with torch.no_grad():
        conv.bias.normal_()
    feats = x.feats.clone().requires_grad_(True)
    y = conv(x.with_feats(feats))
    dense_in = x.with_feats(feats).to_dense()
    w = conv.dense_weight()
    pad = tuple(k // 2 for k in conv.kernel)
    ref = at_sites(F.conv3d(dense_in, w, conv.bias, padding=pad), x)
    torch.testing.assert_close(y.feats, ref, atol=1e-5, rtol=1e-5)
    up = torch.randn_like(ref)
    g_sparse = grads((y.feats * up).sum(), feats, conv.weight, conv.bias)
    g_dense = grads((ref * up).sum(), feats, conv.weight, conv.bias)
    for a, b in zip(g_sparse, g_dense, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # inactive neighbours contribute nothing: the map holds only real pairs
    kmap = submanifold_map(x, conv.kernel)
    centre = len(kmap) // 2
    assert kmap[centre][0].numel() == x.n


@pytest.mark.parametrize("stride", [2, (1, 2, 2)])
def test_strided_and_transposed_equal_dense(stride) -> None:
    x = random_sparse(1)
    down = StridedConv3d(3, 5, stride).double()
    up = TransposedConv3d(5, 2, stride).double()
    feats = x.feats.clone().requires_grad_(True)
    xs = x.with_feats(feats)
    coarse = down(xs)
    fine = up(coarse, xs)
    s = down.stride
    dense_in = xs.to_dense()
    grow = [-(-n // k) * k - n for n, k in zip(SIZE, s, strict=True)]  # pad up to whole coarse voxels
    dense_in = F.pad(dense_in, [0, grow[2], 0, grow[1], 0, grow[0]])
    dense_coarse = F.conv3d(dense_in, down.dense_weight(), stride=s)
    # active coarse sites are exactly the non-empty parents; elsewhere the dense result is zero
    torch.testing.assert_close(coarse.feats, at_sites(dense_coarse, coarse), atol=1e-5, rtol=1e-5)
    mask = torch.zeros(dense_coarse.shape[0], *dense_coarse.shape[2:], dtype=torch.bool)
    mask[coarse.coords[:, 0], coarse.coords[:, 1], coarse.coords[:, 2], coarse.coords[:, 3]] = True
    assert dense_coarse.permute(0, 2, 3, 4, 1)[~mask].abs().max() == 0
    dense_fine = F.conv_transpose3d(dense_coarse, up.dense_weight(), stride=s)
    ref = at_sites(dense_fine, x)
    torch.testing.assert_close(fine.feats, ref, atol=1e-5, rtol=1e-5)
    up_grad = torch.randn_like(ref)
    g_sparse = grads((fine.feats * up_grad).sum(), feats, down.weight, up.weight)
    g_dense = grads((ref * up_grad).sum(), feats, down.weight, up.weight)
    for a, b in zip(g_sparse, g_dense, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_kernel_maps_are_built_once_and_reused() -> None:
    x = random_sparse(2)
    conv1, conv2 = SubmanifoldConv3d(3, 3).double(), SubmanifoldConv3d(3, 3).double()
    y = conv2(conv1(x))
    assert y.cache is x.cache
    assert sum(1 for k in x.cache if k[0] == "sub") == 1
    first = submanifold_map(x, (3, 3, 3))
    assert submanifold_map(y, (3, 3, 3)) is first


def test_batches_do_not_leak_into_each_other() -> None:
    g = torch.Generator().manual_seed(3)
    c = torch.randint(0, 5, (30, 3), generator=g).unique(dim=0)
    f = torch.randn(c.shape[0], 2, generator=g, dtype=torch.float64)
    one = batch_sparse([c], [f], SIZE)
    two = batch_sparse([c, c], [f, torch.zeros_like(f)], SIZE)
    conv = SubmanifoldConv3d(2, 2).double()
    torch.testing.assert_close(conv(two).feats[: c.shape[0]], conv(one).feats)


def test_batch_norm_uses_active_sites_only() -> None:
    x = random_sparse(4)
    bn = SparseBatchNorm(3).double()
    y = bn(x)
    torch.testing.assert_close(y.feats.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0)


def test_float32_matches_float64_reference() -> None:
    x = random_sparse(5)
    conv = SubmanifoldConv3d(3, 8).double()
    ref = conv(x).feats
    out = conv.float()(x.with_feats(x.feats.float())).feats
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
