"""The occupancy-aware "hits" output of the hadron generators (issue 14).

What these guard: hits below the readout threshold or negative energies (the sampler's units are cell
energy / MIP with empty cells exactly 0), a hit rate that is not the head's probability, uniforms from z
that are not uniform or repeat across cells and showers (correlated hits), a likelihood whose optimum is
not the data's distribution, a post-processor that fills empty cells, and the noise projection leaking
into checkpoints.
"""

from __future__ import annotations

import math

import pytest
import torch

from mlfastsim.showers.models.bibae import BIBAE, BIBAEConfig, PostProcessor
from mlfastsim.showers.models.wgan import Generator, hash_uniforms, hit_nll, noise_weight, sample_hits

pytestmark = pytest.mark.usefixtures("one_thread")
GRID = (6, 5, 5)


def _head(n: int, logit: float, loc: float, log_sigma: float) -> torch.Tensor:
    head = torch.empty(n, 3, *GRID)
    head[:, 0], head[:, 1], head[:, 2] = logit, loc, log_sigma
    return head


def test_hash_uniforms_are_uniform_independent_and_deterministic() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(400, 8, generator=g)
    w = noise_weight(8, 300)
    u1, u2 = hash_uniforms(z, w)
    for u in (u1, u2):
        assert u.shape == (400, 300) and float(u.min()) >= 0 and float(u.max()) < 1
        assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    assert float(torch.corrcoef(torch.stack([u1.flatten(), u2.flatten()]))[0, 1].abs()) < 0.01  # the two fields
    across_cells = torch.corrcoef(torch.stack([u1[:, 0], u1[:, 1]]))[0, 1]
    across_showers = torch.corrcoef(torch.stack([u1[0], u1[1]]))[0, 1]
    assert abs(float(across_cells)) < 0.15 and abs(float(across_showers)) < 0.15
    again = hash_uniforms(z.clone(), noise_weight(8, 300))[0]
    assert torch.equal(again, u1)


def test_sample_hits_rate_threshold_and_energy() -> None:
    g = torch.Generator().manual_seed(1)
    n = 2000
    u1, u2 = torch.rand(n, *GRID, generator=g), torch.rand(n, *GRID, generator=g)
    p = 0.1
    x = sample_hits(_head(n, math.log(p / (1 - p)), math.log(3.0), math.log(0.3)), u1, u2, 0.5)
    hits = x[x > 0]
    assert abs(hits.numel() / x.numel() - p) < 0.01
    assert float(hits.min()) >= 0.5 and float(x.min()) == 0.0
    # log E ~ N(log 3, 0.3) (truncation at log 0.5 is 6 sigma away): median ~3, log-width ~0.3
    assert abs(float(hits.log().median()) - math.log(3.0)) < 0.03
    assert abs(float(hits.log().std()) - 0.3) < 0.03
    # a location far below the threshold still gives hits >= threshold, piled just above it
    low = sample_hits(_head(n, 5.0, math.log(0.05), math.log(0.5)), u1, u2, 0.5)
    assert float(low[low > 0].min()) >= 0.5 and float(low[low > 0].median()) < 0.8


def test_hit_nll_is_minimal_at_the_data_distribution() -> None:
    g = torch.Generator().manual_seed(2)
    n = 500
    u1, u2 = torch.rand(n, *GRID, generator=g), torch.rand(n, *GRID, generator=g)
    true = _head(n, -1.0, math.log(2.0), math.log(0.6))
    x = sample_hits(true, u1, u2, 0.5)
    best = float(hit_nll(true, x, 0.5).mean())
    for wrong in (_head(n, -2.0, math.log(2.0), math.log(0.6)), _head(n, -1.0, math.log(4.0), math.log(0.6)),
                  _head(n, -1.0, math.log(2.0), math.log(0.3))):
        assert float(hit_nll(wrong, x, 0.5).mean()) > best
    # a sample read out without a threshold: cells below it count as hits at the threshold (finite)
    assert torch.isfinite(hit_nll(true, x * 0.1, 0.5)).all()


def test_generator_hits_output_deterministic_in_z_and_not_saved() -> None:
    gen = Generator(GRID, 4, [8, 4])
    z, e = torch.randn(3, 4), torch.tensor([0.2, 0.5, 1.0])
    with torch.no_grad():
        a, b = gen(z, e), gen(z, e)
        other = gen(torch.randn(3, 4), e)
    assert a.shape == (3, *GRID) and torch.equal(a, b) and not torch.equal(a, other)
    assert bool(((a == 0) | (a >= 0.5)).all())
    assert "noise_weight" not in gen.state_dict()
    fresh = Generator(GRID, 4, [8, 4])
    fresh.load_state_dict(gen.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(z, e), a)  # the projection is part of the architecture
    # the straight-through sample has the same values and lets gradients reach the hit probabilities
    st = gen(z, e, straight_through=True)
    assert torch.allclose(st.detach(), a)
    st.sum().backward()
    assert gen.out.bias.grad is not None and float(gen.out.bias.grad[0].abs()) > 0


def test_bibae_hits_decoder_samples_and_postprocessor_keeps_empty_cells_empty() -> None:
    cfg = BIBAEConfig(latent_dim=5, encoder_channels=[4], encoder_hidden=16, decoder_channels=[8, 4],
                      critic_channels=[4], critic_hidden=8, latent_critic_hidden=[8])
    bib = BIBAE(GRID, cfg)
    x = torch.zeros(4, *GRID)
    x[:, 1:4, 2, 2] = 3.0
    recon = bib(x, torch.full((4,), 0.5))[0]
    assert recon.shape == x.shape and bool(((recon == 0) | (recon >= cfg.hit_threshold)).all())
    pp = PostProcessor(GRID, [8])
    with torch.no_grad():
        pp.net[-1].bias.fill_(2.0)  # a large offset: must not create hits
        out = pp(x, torch.full((4,), 0.5))
    assert bool((out[x == 0] == 0).all()) and bool((out[x > 0] > 0).all())
