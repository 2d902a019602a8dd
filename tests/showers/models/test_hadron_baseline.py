"""The energy baseline of the hadron hit head (conditioning/grid.py, issue 14).

What these guard: a fit that does not recover the energy scaling it was given (hit fraction and hit energy
growing with E), a baseline lost on the way through a checkpoint's normalisation, a generator that ignores
it (showers of one size at every energy: the unlearned condition this exists to fix), hits above the
fitted maximum, and a truncated likelihood that is not normalised.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mlfastsim.showers.conditioning.grid import HadronNormalisation, fit_energy_baseline
from mlfastsim.showers.geometry import CartesianGrid
from mlfastsim.showers.models.wgan import Generator, hit_nll, sample_hits, shifted_along_z

pytestmark = pytest.mark.usefixtures("one_thread")


def _toy(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, CartesianGrid]:
    """Showers whose hit fraction is 0.2 (e / 0.5)^0.7 (capped) and whose log hit energy is
    N(0.3 log(e) + 1, 0.5) cut at 0.5: a known scaling to recover."""
    rng = np.random.default_rng(seed)
    grid = CartesianGrid(n_x=5, n_y=5, n_z=4, cell_x=30.0, cell_y=30.0, cell_z=26.5, axis_x=2, axis_y=2)
    e = rng.uniform(0.1, 1.0, n).astype(np.float32)
    p = np.minimum(0.2 * (e / 0.5) ** 0.7, 0.9)[:, None, None, None]
    hit = rng.random((n, 4, 5, 5)) < p
    energy = np.exp(1.0 + 0.3 * np.log(e)[:, None, None, None] + 0.5 * rng.standard_normal((n, 4, 5, 5)))
    x = np.where(hit & (energy >= 0.5), energy, 0.0).astype(np.float32)
    return x, e, grid


def test_fit_recovers_the_energy_scaling_and_survives_the_checkpoint_dict() -> None:
    x, e, grid = _toy()
    base = fit_energy_baseline(x, e, grid)
    norm = HadronNormalisation(grid, 1.0, 0.5, 100.0, (10.0, 100.0), base)
    again = HadronNormalisation.from_dict(norm.to_dict())
    assert again.baseline == base
    a, b, log_max = again.baseline_fields()
    assert a.shape == b.shape == (3, 4, 5, 5) and log_max is not None and log_max.shape == (4, 5, 5)
    assert 0.5 < float(b[0].mean()) < 0.9  # log-odds slope ~0.7 (a little more: p is not small)
    assert 0.15 < float(b[1].mean()) < 0.45  # mean log E: slope 0.3 (the 0.5 cut flattens it a little)
    assert float(log_max.min()) > math.log(float(x.max())) - 1.0
    assert HadronNormalisation.from_dict({k: v for k, v in norm.to_dict().items() if k != "baseline"}).baseline is None


def test_generator_with_baseline_makes_bigger_showers_at_higher_energy_and_respects_the_maximum() -> None:
    x, e, grid = _toy()
    norm = HadronNormalisation(grid, 1.0, 0.5, 100.0, (10.0, 100.0), fit_energy_baseline(x, e, grid))
    fields = norm.baseline_fields()
    torch.manual_seed(0)
    gen = Generator(grid.shape, 6, [8, 4], baseline=fields).eval()
    z = torch.randn(400, 6)
    with torch.no_grad():
        low, high = gen(z, torch.full((400,), 0.1)), gen(z, torch.full((400,), 1.0))
    assert float(high.sum()) > 3.0 * float(low.sum())  # data: E_sum grows ~ e^1.0, hits ~ e^0.7
    assert bool((high <= torch.exp(gen.log_max) * (1 + 1e-5)).all())
    assert "base_a" not in gen.state_dict() and "log_max" not in gen.state_dict()  # rebuilt from the normalisation


def test_upper_truncation_in_sampler_and_likelihood() -> None:
    n, grid = 4000, (1, 1, 1)
    head = torch.zeros(n, 3, *grid)
    head[:, 0], head[:, 1], head[:, 2] = 10.0, math.log(5.0), math.log(1.5)
    log_max = torch.full(grid, math.log(20.0))
    g = torch.Generator().manual_seed(0)
    u1, u2 = torch.rand(n, *grid, generator=g), torch.rand(n, *grid, generator=g)
    x = sample_hits(head, u1, u2, 0.5, log_max=log_max)
    assert float(x.max()) <= 20.0 * (1 + 1e-5) and float(x[x > 0].min()) >= 0.5
    # the truncated density integrates to one: check on a grid of log E between the two cuts
    y = torch.linspace(math.log(0.5), math.log(20.0), 2001)
    one = torch.zeros(len(y), 3, *grid)
    one[:, 0], one[:, 1], one[:, 2] = 30.0, math.log(5.0), math.log(1.5)
    dens = torch.exp(-hit_nll(one, torch.exp(y).reshape(-1, *grid), 0.5, log_max=log_max))
    assert abs(float(torch.trapezoid(dens, y)) - 1.0) < 0.01


def test_depth_shift_moves_the_baseline_along_z_and_starts_at_zero() -> None:
    f = torch.randn(3, 10, 2, 2)
    out = shifted_along_z(f, torch.tensor([0.0, 2.0, -1.5]))
    assert torch.allclose(out[0], f)  # no shift: the field itself
    assert torch.allclose(out[1][:, 2:], f[:, :-2])  # two layers deeper; the first layers repeat layer 0
    assert torch.allclose(out[1][:, :2], f[:, :1].expand(3, 2, 2, 2))
    assert torch.allclose(out[2][:, 0], 0.5 * (f[:, 1] + f[:, 2]))  # 1.5 layers shallower: interpolated
    shift = torch.tensor([0.3], requires_grad=True)
    shifted_along_z(f, shift).sum().backward()
    assert shift.grad is not None and float(shift.grad.abs()) > 0  # the decoder can learn it
    x, e, grid = _toy(200)
    norm = HadronNormalisation(grid, 1.0, 0.5, 100.0, (10.0, 100.0), fit_energy_baseline(x, e, grid))
    torch.manual_seed(0)
    gen = Generator(grid.shape, 6, [8, 4], baseline=norm.baseline_fields(), depth_shift=True)
    with torch.no_grad():
        inputs = torch.cat([torch.randn(2000, 6), torch.full((2000, 1), 0.5)], 1)
        spread = 12.0 * torch.tanh(10.0 * gen.shift_head(inputs))
    assert 1.5 < float(spread.std()) < 5.0  # starts with a few layers of depth spread driven by z
