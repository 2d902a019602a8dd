"""The flow-matching family on the hadron grid (``cfm_grid``) and the ``cfm`` options it brought.

The shared suite (test_registry.py) trains, reloads, resumes, exports (ONNX parity) and generates
``cfm_grid``; here: the grid's units (cells in MIP, condition E / 100 GeV) invert exactly through the flow's
units, ``occupancy: counted`` keeps exactly the generated number of hits per layer, the hottest cell is capped
at the data's maximum, the shape-loss weights follow the hit frequency and change nothing where they are
off, and the per-cell head sees each cell's own value.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlfastsim.showers.conditioning.grid import HadronDataConfig, HadronNormalisation, load_hadron_data
from mlfastsim.showers.geometry import CartesianGrid
from mlfastsim.showers.io.native import write_native
from mlfastsim.showers.models.cfm import CFMConfig, CFMSampler, ShapeNet
from mlfastsim.showers.models.cfm_grid import GridCFM, GridCFMConfig, flow_threshold_mev
from mlfastsim.showers.sim.hadronic import HADRON_CALORIMETERS, simulate_pions_data

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = CartesianGrid(n_x=9, n_y=9, n_z=12, cell_x=30.0, cell_y=30.0, cell_z=106.0, name="tiny")
SMALL = {"width": 16, "depth": 1, "heads": 2, "energy_width": 16, "energy_depth": 1, "time_frequencies": 2}


@pytest.fixture(scope="module")
def pions(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.Tensor, torch.Tensor, HadronNormalisation]:
    """Pions of 20 and 80 GeV on a tiny grid, through the hadron data path (0.5 MIP threshold, MIP units)."""
    e = np.repeat(np.array([20e3, 80e3], dtype=np.float32), 40)
    path = write_native(simulate_pions_data(e, GRID, HADRON_CALORIMETERS["steel_scint"], 5),
                        tmp_path_factory.mktemp("pions") / "pions.h5")
    data = load_hadron_data(HadronDataConfig(files=[path], crop=None))
    assert data.norm.threshold_mev > 0 and (data.x > 0).any()
    return data.x, data.c, data.norm


def _model(norm: HadronNormalisation, **kw: object) -> GridCFM:
    torch.manual_seed(0)
    return GridCFM(norm.grid.shape, GridCFMConfig(**SMALL, **kw), norm)  # type: ignore[arg-type]


@pytest.mark.parametrize("occupancy", ["threshold", "counted"])
def test_grid_units_invert_to_the_read_out_cells(pions: tuple[torch.Tensor, torch.Tensor, HadronNormalisation],
                                                 occupancy: str) -> None:
    x, c, norm = pions
    model = _model(norm, occupancy=occupancy, hit_floor_mip=0.0)
    w, y = model.to_units(x, c.reshape(-1, 1))
    assert w.shape[1] == GRID.n_z + 1 + (GRID.n_z if occupancy == "counted" else 0)
    back = model.assemble(w, y, c.reshape(-1, 1)).numpy()
    flat = x.reshape(len(x), -1).numpy()
    assert np.array_equal(back > 0, flat > 0)  # the same hits, counted or thresholded
    np.testing.assert_allclose(back, flat, rtol=1e-4, atol=1e-4)  # in MIP, as the data
    if occupancy == "counted":
        np.testing.assert_array_equal(model.hit_counts(w).numpy(), (flat.reshape(len(x), GRID.n_z, -1) > 0).sum(2))
        # the default floor (a kept cell starts from >= 1 MIP) moves energy from hot cells to the faint ones of
        # the layer: no new hits, none below the threshold, the layer energies kept where no hit drops out
        floored = _model(norm, occupancy=occupancy).assemble(w, y, c.reshape(-1, 1)).numpy()
        thr_mip = norm.threshold_mev / norm.energy_scale_mev
        assert not np.any((floored > 0) & (flat == 0)) and np.all((floored == 0) | (floored >= thr_mip * (1 - 1e-5)))
        layers = lambda a: a.reshape(len(x), GRID.n_z, -1).sum(2)  # noqa: E731
        same = (floored > 0).sum() == (flat > 0).sum()
        assert same or (floored > 0).sum() > 0.95 * (flat > 0).sum()
        kept = np.all((floored > 0) == (flat > 0), axis=1)
        np.testing.assert_allclose(layers(floored)[kept], layers(flat)[kept], rtol=1e-4, atol=1e-3)


def test_counted_occupancy_keeps_the_generated_number_of_hits_per_layer(
        pions: tuple[torch.Tensor, torch.Tensor, HadronNormalisation]) -> None:
    """Whatever the cells' flow leaves above or below zero, a layer has the hits its energy flow gave (those
    of highest y), as long as its energy can pay each of them the threshold."""
    _, _, norm = pions
    model = _model(norm, occupancy="counted")
    b, nz, patch = 6, GRID.n_z, GRID.n_x * GRID.n_y
    torch.manual_seed(4)
    n = torch.randint(0, 20, (b, nz)).float()
    u = torch.full((b, nz), 0.8 / nz)  # 80 % of 50 GeV: ~80 MIP per layer, enough for 20 hits of >= 0.5 MIP
    w = model.energy_units(u, n)
    y = torch.randn(b, nz, patch) * 0.1 - 0.4  # nearly every cell below zero: "threshold" would keep none
    c = torch.full((b, 1), 0.5)
    out = model.assemble(w, y, c).reshape(b, nz, patch)
    np.testing.assert_array_equal((out > 0).sum(2).numpy(), n.numpy())
    top = torch.topk(y, 19, dim=2).indices  # the kept cells are those of highest y
    kept = out.gather(2, top) > 0
    assert bool(kept[..., :1][n[..., None] > 0].all())
    thr_mip = norm.threshold_mev / norm.energy_scale_mev
    assert float(out[out > 0].min()) >= thr_mip * (1 - 1e-5)


def test_the_hottest_cell_is_capped_at_the_datas_maximum(
        pions: tuple[torch.Tensor, torch.Tensor, HadronNormalisation]) -> None:
    x, c, norm = pions
    model = _model(norm)
    w, y = model.to_units(x, c.reshape(-1, 1))
    assert bool((y <= model.y_max).all())  # the data sit below the cap
    hot = y.clone()
    hot[:, 3, 40] = 50.0  # a runaway cell: without the cap it would take its layer's whole energy
    uncapped = _model(norm)
    uncapped.y_max.fill_(float("inf"))
    shares = []
    for m in (model, uncapped):
        out = m.assemble(w, hot, c.reshape(-1, 1)).reshape(len(x), GRID.n_z, -1)
        assert torch.isfinite(out).all()
        shares.append(out[:, 3, 40] / out[:, 3].sum(1).clamp_min(1e-9))
    others = (x.reshape(len(x), GRID.n_z, -1)[:, 3] > 0).sum(1) > 1  # layers with other hits to lose energy to
    assert bool(others.any())
    assert float(shares[1][others].min()) > 0.999  # without the cap the runaway cell takes the layer
    assert bool((shares[0][others] <= shares[1][others]).all()) and float(shares[0][others].mean()) < 0.95


def test_cell_weights_follow_the_hit_frequency_and_are_off_by_default(
        pions: tuple[torch.Tensor, torch.Tensor, HadronNormalisation]) -> None:
    x, c, norm = pions
    assert _model(norm).cell_weights(c.reshape(-1, 1)) is None
    model = _model(norm, cell_weight_floor=0.1)
    wts = model.cell_weights(c.reshape(-1, 1))
    assert wts is not None and wts.shape == (len(x), GRID.n_z, GRID.n_x * GRID.n_y)
    np.testing.assert_allclose(wts.mean(dim=(1, 2)).numpy(), 1.1, rtol=1e-4)
    hits = (x.reshape(len(x), GRID.n_z, -1) > 0).float().mean(0)
    w_mean = wts.mean(0)
    assert float(w_mean[hits > 0.3].mean()) > 5 * float(w_mean[hits < 0.01].mean())  # the core outweighs the edge
    torch.manual_seed(1)
    losses = model(x, c)
    assert torch.isfinite(losses["loss"]).item() and float(losses["shape"].detach()) > 0


def test_the_cell_head_reads_each_cells_own_value() -> None:
    """Without it a token of ``width`` numbers must carry its patch's noise through (it cannot: 625 cells in
    96 numbers on hcal48); with it a cell's velocity depends on its own value beyond the token's view."""
    torch.manual_seed(0)
    net = ShapeNet(4, 50, 1, CFMConfig(**SMALL, cell_head=4))
    assert net.cell is not None
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    y = torch.randn(2, 4, 50)
    args = (torch.randn(2, 4), torch.rand(2, 1), torch.rand(2))
    moved = y.clone()
    moved[:, 1, 7] += 1.0
    with torch.no_grad():
        delta = (net(moved, *args) - net(y, *args)).abs()
    assert float(delta[:, 1, 7].min()) > 0 and float(delta[:, 1, 7].min()) > float(delta[:, 1, 8].max())


def test_flow_threshold_and_sampler_output_units(pions: tuple[torch.Tensor, torch.Tensor, HadronNormalisation]
                                                 ) -> None:
    _, c, norm = pions
    cfg = GridCFMConfig(**SMALL)  # type: ignore[arg-type]
    assert flow_threshold_mev(cfg, norm) == norm.threshold_mev
    bare = HadronNormalisation(norm.grid, norm.energy_scale_mev, 0.0, 100.0, (10.0, 100.0), norm.baseline)
    assert flow_threshold_mev(cfg, bare) == pytest.approx(0.1 * norm.energy_scale_mev)
    assert flow_threshold_mev(cfg.model_copy(update={"readout_threshold_mev": 3.0}), norm) == 3.0
    model = _model(norm, occupancy="counted", cell_head=4).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    latent = model.n_energy + GRID.n_voxels
    out = CFMSampler(model, 2)(torch.cat([torch.randn(8, latent), c[:8, None]], dim=1)).detach().numpy()
    thr_mip = norm.threshold_mev / norm.energy_scale_mev
    assert out.shape == (8, GRID.n_voxels) and np.isfinite(out).all()
    assert np.all((out == 0) | (out >= thr_mip * (1 - 1e-5)))  # MIP units, zeros below the threshold
