"""Model shapes, batch independence, the 2D levels and the frozen backbone."""

from __future__ import annotations

import torch

from mlfastsim.lartpc.config import ModelConfig
from mlfastsim.lartpc.models import BinarySparseCellNet, ChargeSparseCellNet, SparseCellNet
from mlfastsim.lartpc.sparse import batch_sparse

SIZE = (16, 12, 12)


def events(seed: int, n: int = 2, feats: int = 3):
    g = torch.Generator().manual_seed(seed)
    coords, f = [], []
    for _ in range(n):
        c = (torch.rand(SIZE, generator=g) < 0.05).nonzero()
        coords.append(c)
        f.append(torch.rand(c.shape[0], feats, generator=g))
    return coords, f


def test_backbone_keeps_sites_and_gives_nchannels() -> None:
    cfg = ModelConfig(spatial_size=SIZE, nChannels=4, nStrides=3, n_2D=1, downsample_t=2)
    c, f = events(0)
    x = batch_sparse(c, f, SIZE)
    y = SparseCellNet(3, cfg)(x)
    assert torch.equal(y.coords, x.coords) and y.feats.shape == (x.n, 4)
    # the 2D level downsamples y and z only; the 3D level also the drift axis
    strides = sorted({k[1] for k in x.cache if k[0] == "sub"})
    assert strides == [(1, 1, 1), (1, 2, 2), (2, 4, 4)]
    sub_kernels = {k[1]: k[2] for k in x.cache if k[0] == "sub"}
    assert sub_kernels[(1, 1, 1)] == (1, 3, 3) and sub_kernels[(2, 4, 4)] == (3, 3, 3)


def test_heads_and_batch_independence() -> None:
    cfg = ModelConfig(type="charge", spatial_size=SIZE, nChannels=4, nStrides=2, nHiddenLayers=2)
    c, f = events(1)
    n = sum(len(x) for x in c)
    for net, shape in ((BinarySparseCellNet(3, cfg), (n,)), (ChargeSparseCellNet(3, cfg), (n, 2))):
        net.eval()
        both = net(batch_sparse(c, f, SIZE))
        assert both.shape == shape
        first = net(batch_sparse(c[:1], f[:1], SIZE))
        torch.testing.assert_close(both[: len(c[0])], first, atol=1e-5, rtol=1e-5)
    out = ChargeSparseCellNet(3, cfg)(batch_sparse(c, f, SIZE))
    score, q = ChargeSparseCellNet.score(out), ChargeSparseCellNet.charge(out, 0.1)
    assert ((score > 0) & (score < 1)).all() and (q > 0).all()
    torch.testing.assert_close(torch.log(q / 0.1), out[:, 1])


def test_frozen_backbone_gets_no_gradient_and_keeps_its_statistics() -> None:
    cfg = ModelConfig(type="charge", spatial_size=SIZE, nChannels=4, nStrides=2, freeze_backbone=True)
    net = ChargeSparseCellNet(3, cfg).train()
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    c, f = events(2)
    net(batch_sparse(c, f, SIZE)).sum().backward()
    assert all(p.grad is None for p in net.backbone.parameters())
    assert all(p.grad is not None for p in net.head.parameters())
    for k, v in net.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
