"""What is new in the flow-matching family (``cfm``) and in the VAE's zero suppression.

The shared suite (test_registry.py) already trains, reloads, resumes, exports and generates ``cfm``; here:
the network units invert exactly (energies first: layer sums are the layer energies), generated cells are
exact zeros below the readout threshold, the solver step count is an option of generate/export and is
recorded, and the VAE zero-suppresses in torch and in ONNX while old checkpoints load unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mlfastsim.core.errors import ConfigError
from mlfastsim.showers.conditioning.em import ConditioningConfig, EMNormalisation, make_conditions, normalise_showers
from mlfastsim.showers.config import ExportConfig, GenerateConfig
from mlfastsim.showers.geometry import DETECTOR_PRESETS, CylindricalMesh
from mlfastsim.showers.inference.export import export_onnx
from mlfastsim.showers.inference.generate import generate_to_file
from mlfastsim.showers.models import MODELS, load_model
from mlfastsim.showers.models.cfm import CFMConfig, CFMSampler, ShowerCFM
from mlfastsim.showers.models.vae import READOUT_THRESHOLD_MEV, VAEConfig, vae_generator
from mlfastsim.showers.sim.em import make_kinematics, simulate

pytestmark = pytest.mark.usefixtures("one_thread")

MESH = CylindricalMesh(n_r=4, n_phi=3, n_z=5, size_r=6.0, size_z=4.0, name="tiny")
COND = ConditioningConfig()
THR = READOUT_THRESHOLD_MEV


@pytest.fixture(scope="module")
def showers() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    e, a = make_kinematics(energies_gev=[1.0, 30.0], angles_deg=[60.0, 90.0], n_per_point=10, seed=2)
    data = simulate(DETECTOR_PRESETS["SiW"], MESH, e, a, seed=2)
    x = torch.from_numpy(normalise_showers(data))
    c = torch.from_numpy(make_conditions(data.energies, data.angles, 0, COND))
    return x, c, data.energies


def _model(cfg: CFMConfig | None = None) -> ShowerCFM:
    torch.manual_seed(0)
    return ShowerCFM(MESH.n_z, MESH.n_phi * MESH.n_r, 2 + COND.n_geometry_slots, COND.max_energy_gev * 1e3,
                     cfg or CFMConfig(width=16, depth=1, heads=2, energy_width=16, energy_depth=1))


@pytest.mark.parametrize("energy_param", ["per_layer", "total_first"])
def test_network_units_invert_to_the_read_out_cells(showers: tuple[torch.Tensor, torch.Tensor, np.ndarray],
                                                    energy_param: str) -> None:
    x, c, energies = showers
    model = _model(CFMConfig(width=16, depth=1, heads=2, energy_width=16, energy_depth=1, energy_param=energy_param))
    w, y = model.to_units(x, c)
    assert w.shape[1] == MESH.n_z + (energy_param == "total_first")
    back = model.assemble(w, y, c).numpy()
    cells = x.numpy() * energies[:, None]
    read_out = np.where(cells >= THR, x.numpy(), 0.0)
    # layers are rescaled to their full energy (sub-threshold cells included), so hit cells grow by that share
    np.testing.assert_allclose(back, read_out, rtol=0, atol=2e-3 * read_out.max())
    assert np.all((back == 0) == (read_out == 0))
    # energies first: the per-layer energies (and so E_tot/E_inc) are what the units carry
    np.testing.assert_allclose(back.reshape(len(x), MESH.n_z, -1).sum(2),
                               x.numpy().reshape(len(x), MESH.n_z, -1).sum(2), rtol=1e-3, atol=1e-6)


def test_total_first_generates_exactly_the_total_its_energy_flow_gives() -> None:
    """E_tot/E_inc is one coordinate of the energy flow: whatever the layer shares come out as, they are
    renormalised, so the layers sum to exp(total_scale * e_0) and the shape network sees those energies."""
    model = _model(CFMConfig(width=16, depth=1, heads=2, energy_width=16, energy_depth=1, energy_param="total_first"))
    torch.manual_seed(3)
    e = torch.randn(32, MESH.n_z + 1) * 2
    u = model.layer_energies(e)
    assert (u >= 0).all()
    np.testing.assert_allclose(u.sum(1).numpy(), torch.exp(0.2 * e[:, 0]).numpy(), rtol=1e-5)
    per_layer = _model()  # v1 checkpoints: the shape network sees the energy coordinates themselves
    assert torch.equal(per_layer.shape_condition(e[:, 1:]), e[:, 1:])
    np.testing.assert_allclose(model.shape_condition(e).numpy(), model._log_share(u).numpy(), rtol=1e-6)


def test_generated_cells_are_exact_zeros_below_the_threshold(
        showers: tuple[torch.Tensor, torch.Tensor, np.ndarray]) -> None:
    _, c, energies = showers
    model = _model().eval()
    torch.manual_seed(1)
    with torch.no_grad():  # random (untrained) weights: perturb the zero-initialised output layer
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    latent = MESH.n_z + MESH.n_voxels
    out = CFMSampler(model, 4)(torch.cat([torch.randn(len(c), latent), c], dim=1)).detach().numpy()
    mev = out * energies[:, None]
    assert np.isfinite(mev).all() and (mev >= 0).all()
    assert np.all((mev == 0) | (mev >= THR * (1 - 1e-5)))
    assert (mev == 0).any() and (mev > 0).any()


def test_steps_is_an_option_of_generate_and_export(tmp_path: Path) -> None:
    spec = MODELS["cfm"]
    assert spec.with_steps(CFMConfig(), 3).steps == 3 and spec.with_steps(CFMConfig(), None).steps == 8
    with pytest.raises(ConfigError, match="no solver steps"):
        MODELS["vae"].with_steps(VAEConfig(), 4)
    norm = EMNormalisation(MESH, COND)
    cfg = CFMConfig(width=16, depth=1, heads=2, energy_width=16, energy_depth=1, steps=2)
    modules = spec.build_modules(cfg, norm)
    ckpt = tmp_path / "cfm.pt"
    torch.save({"model_type": "cfm", "model_config": cfg.model_dump(mode="json"), **norm.meta(), "step": 0,
                "modules": {k: m.state_dict() for k, m in modules.items()}}, ckpt)
    loaded = load_model(ckpt)
    assert loaded.sampler(steps=5).steps == 5 and loaded.sampler().steps == 2
    onnx = export_onnx(ExportConfig(checkpoint=ckpt, onnx_file_name=tmp_path / "m.onnx", parity_samples=8, steps=3))
    sidecar = json.loads(onnx.with_suffix(".json").read_text())
    assert sidecar["solver"]["steps"] == 3 and sidecar["model_config"]["steps"] == 3
    assert sidecar["latent_dim"] == MESH.n_z + MESH.n_voxels
    kin = {"energies_gev": [10.0], "angles_deg": [90.0], "n_per_point": 4, "seed": 1}
    with pytest.raises(ConfigError, match="fixed at export"):
        generate_to_file(GenerateConfig(onnx=onnx, output=tmp_path / "x.h5", steps=4, **kin), progress=False)
    a = generate_to_file(GenerateConfig(onnx=onnx, output=tmp_path / "a.h5", **kin), progress=False).load()
    b = generate_to_file(GenerateConfig(checkpoint=ckpt, output=tmp_path / "b.h5", steps=3, **kin),
                         progress=False).load()
    assert a.meta["solver_steps"] == b.meta["solver_steps"] == 3
    np.testing.assert_allclose(a.showers, b.showers, rtol=0, atol=1e-3 * max(1.0, float(b.showers.max())))


# ------------------------------------------------------------------------------------- VAE zero suppression
def test_vae_zero_suppression_in_every_generation_path() -> None:
    spec = MODELS["vae"]
    cfg = VAEConfig(encoder_sizes=[16, 8], latent_dim=3)
    norm = EMNormalisation(MESH, COND)
    torch.manual_seed(0)
    model = spec.build_modules(cfg, norm)["model"].eval()
    with torch.no_grad():  # outputs around 1e-5 of E_inc: below the threshold at 1 GeV, above it at 500 GeV
        model.to_voxels.bias.copy_(-11.5 + torch.randn(MESH.n_voxels))
    e = np.array([1e3, 1e4, 5e5] * 4, dtype=np.float32)
    x = torch.cat([torch.randn(len(e), 3), torch.from_numpy(make_conditions(e, None, 1, COND))], dim=1)
    plain = vae_generator(model, None)(x).detach().numpy()
    gen = spec.sampler({"model": model}, cfg, norm)
    suppressed = gen(x).detach().numpy()
    below = plain * e[:, None] < THR
    assert below.any() and (~below).any()
    assert np.all(suppressed[below] == 0) and np.array_equal(suppressed[~below], plain[~below])
    for rows in (1, len(e)):  # the numpy route (small outputs) and the in-place torch route agree with forward
        out = torch.empty(rows, MESH.n_voxels)
        with torch.inference_mode():
            gen.generate_into(x[:rows], out)
        np.testing.assert_array_equal(out.numpy() == 0, suppressed[:rows] == 0)
    off = spec.sampler({"model": model}, cfg.model_copy(update={"readout_threshold_mev": 0.0}), norm)
    np.testing.assert_array_equal(off(x).detach().numpy(), plain)


def test_vae_configs_without_the_field_load_and_dump_unchanged() -> None:
    old = {"type": "vae", "encoder_sizes": [100, 50, 20, 14], "latent_dim": 10, "batch_norm": True,
           "leaky_relu_slope": 0.01, "kl_weight": 0.01}
    cfg = VAEConfig.model_validate(old)
    assert cfg.readout_threshold_mev == THR  # zero suppression on for checkpoints written before the option
    assert cfg.model_dump(mode="json") == old  # the default is left out: shipped bytes and sha256 unchanged
    assert VAEConfig.model_validate({**old, "readout_threshold_mev": 0}).model_dump()["readout_threshold_mev"] == 0


def test_shipped_cfm_loads_and_generates_read_out_showers() -> None:
    from mlfastsim.showers.inference.generate import generate
    from mlfastsim.showers.pretrained import pretrained_path

    loaded = load_model(pretrained_path("cfm_ds2"), command="adapt")
    assert loaded.model_type == "cfm" and loaded.latent_dim == loaded.model.n_energy + loaded.mesh.n_voxels
    assert loaded.config.energy_param == "total_first"  # v2: E_tot/E_inc is its own coordinate
    e = np.array([2e3, 200e3], dtype=np.float32)
    showers = generate(loaded.with_steps(2), e, np.array([90.0, 60.0], dtype=np.float32), 0, seed=0, batch_size=2)
    assert np.isfinite(showers).all() and np.all((showers == 0) | (showers >= THR * (1 - 1e-5)))
    assert 0.8 < float(showers[1].sum() / e[1]) < 1.2  # SiW (slot 0) responds 0.99 +- 0.03
