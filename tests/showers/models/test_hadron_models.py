"""Hadron-shower networks (WGAN + constrainer, BIB-AE + post-processor): shapes, gradient flow, the gradient
penalty against its analytic value, training reduces the losses, exact resume and ONNX export parity.

Everything runs on tiny grids with small channel counts so the whole file stays well under a minute.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from mlfastsim.core.errors import ConfigError, DataError
from mlfastsim.core.trainer import Trainer, TrainerConfig, TrainTask
from mlfastsim.showers.models import MODELS, get_model_type
from mlfastsim.showers.models.bibae import (
    BIBAE,
    BIBAEConfig,
    LatentCritic,
    MainCritic,
    PostProcessConfig,
    PostProcessor,
    PostProcessTask,
    mmd,
    sorted_hit_mmd,
)
from mlfastsim.showers.models.hadrons import latent_dim
from mlfastsim.showers.models.wgan import (
    Critic,
    EnergyRegressor,
    Generator,
    RegressorConfig,
    WGANConfig,
    gradient_penalty,
)

GRID = (8, 6, 6)
SMALL_WGAN = WGANConfig(latent_dim=6, generator_channels=[8, 4], critic_channels=[4, 8], critic_hidden=16, n_critic=2,
                        regressor=RegressorConfig(channels=[4, 8], hidden=16))
SMALL_REG = SMALL_WGAN.regressor
SMALL_BIBAE = BIBAEConfig(latent_dim=5, encoder_channels=[4, 8], encoder_hidden=32, decoder_channels=[8, 4],
                          critic_channels=[4, 8], critic_hidden=16, latent_critic_hidden=[16])
SMALL_PP = PostProcessConfig(bibae=SMALL_BIBAE, channels=[16, 16], sorted_k=40, lr=3e-3)


pytestmark = pytest.mark.usefixtures("one_thread")


def toy_showers(n: int, grid: tuple[int, int, int] = GRID, seed: int = 0, *, fluctuate: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse, heavy-tailed showers whose total energy scales with e: a longitudinal gamma-like profile with
    a fluctuating start, a Gaussian lateral core, exponential cell fluctuations and ~40% empty cells
    (``fluctuate=False``: the smooth mean shower only, which an autoencoder can learn to reconstruct)."""
    g = torch.Generator().manual_seed(seed)
    nz, ny, nx = grid
    e = 0.1 + 0.9 * torch.rand(n, generator=g)
    z = torch.arange(nz, dtype=torch.float32)[None, :]
    start = torch.rand(n, 1, generator=g) * nz / 3
    t = (z - start).clamp_min(0)
    long = t * torch.exp(-t / 2.0)
    yy = torch.arange(ny, dtype=torch.float32) - (ny - 1) / 2
    xx = torch.arange(nx, dtype=torch.float32) - (nx - 1) / 2
    lat = torch.exp(-(yy[:, None] ** 2 + xx[None, :] ** 2) / 2.0)
    mean = long[:, :, None, None] * lat[None, None]
    mean = mean / mean.flatten(1).sum(1).clamp_min(1e-6)[:, None, None, None] * (20.0 * e)[:, None, None, None]
    fluct = -torch.log(torch.rand(n, *grid, generator=g).clamp_min(1e-6))
    keep = (torch.rand(n, *grid, generator=g) > 0.4).float()
    return ((mean * fluct * keep) if fluctuate else mean).float(), e


def weights_hash(modules: dict[str, nn.Module]) -> str:
    h = hashlib.sha256()
    for name, m in sorted(modules.items()):
        for key, tensor in m.state_dict().items():
            h.update(f"{name}.{key}".encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _task(name: str, grid: tuple[int, int, int] = GRID, seed: int = 0) -> TrainTask:
    if name == "regressor":
        return MODELS["regressor"].task_on(SMALL_REG, grid, seed=seed, aux_modules=None)
    if name == "wgan":
        reg = MODELS["regressor"].modules_on(SMALL_REG, grid, seed=seed + 1)["regressor"]
        return MODELS["wgan"].task_on(SMALL_WGAN, grid, seed=seed, aux_modules={"regressor": reg})
    if name == "bibae":
        return MODELS["bibae"].task_on(SMALL_BIBAE, grid, seed=seed, aux_modules=None)
    bib = MODELS["bibae"].modules_on(SMALL_BIBAE, grid, seed=seed + 1)["bibae"]
    return MODELS["postprocess"].task_on(SMALL_PP, grid, seed=seed, aux_modules={"bibae": bib})


# ------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("grid", [(8, 6, 6), (5, 7, 3), (1, 1, 1), (12, 9, 10)])
def test_output_shapes_for_any_grid(grid: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    b = 3
    x, e = torch.rand(b, *grid), torch.rand(b)
    gen = Generator(grid, 6, [8, 4, 4])
    fake = gen(torch.randn(b, 6), e)
    assert fake.shape == (b, *grid) and (fake >= 0).all()
    assert Critic(grid, [4, 8, 8], 16)(x, e).shape == (b,)
    assert EnergyRegressor(grid, SMALL_REG)(x).shape == (b,)
    bib = BIBAE(grid, SMALL_BIBAE)
    recon, mu, logvar, z = bib(x, e)
    assert recon.shape == (b, *grid) and (recon >= 0).all()
    assert mu.shape == logvar.shape == z.shape == (b, SMALL_BIBAE.latent_dim)
    assert LatentCritic(SMALL_BIBAE.latent_dim, [16])(z).shape == (b,)
    assert MainCritic(grid, SMALL_BIBAE)(MainCritic.pair(x, recon), e).shape == (b,)
    pp = PostProcessor(grid, [8])(recon, e)
    assert pp.shape == (b, *grid) and (pp >= 0).all()
    for name, cfg in (("wgan", SMALL_WGAN), ("bibae", SMALL_BIBAE), ("postprocess", SMALL_PP)):
        mods = MODELS[name].modules_on(cfg, grid, seed=0)
        sampler = MODELS[name].sampler_on(mods, cfg, grid)
        out = sampler(torch.cat([torch.randn(b, latent_dim(cfg)), e[:, None]], dim=1))
        assert out.shape == (b, math.prod(grid))


def test_build_modules_match_task_modules() -> None:
    """generate/export rebuild modules with build_modules and load a checkpoint's modules into them."""
    configs = {"regressor": SMALL_REG, "wgan": SMALL_WGAN, "bibae": SMALL_BIBAE, "postprocess": SMALL_PP}
    for name, cfg in configs.items():
        task = _task(name)
        fresh = MODELS[name].modules_on(cfg, GRID, seed=5)
        assert set(fresh) == set(task.modules()), name
        for key, m in task.modules().items():
            fresh[key].load_state_dict(m.state_dict())


# ------------------------------------------------------------------------------------------- gradients
def _assert_all_grads(module: nn.Module, loss: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    loss.backward()
    missing = [n for n, p in module.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"{type(module).__name__}: no gradient for {missing}"


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(1)
    x, e = toy_showers(6)
    w = torch.randn(6, *GRID)  # a random projection: no parameter can hide behind a symmetric loss
    gen = Generator(GRID, 6, [8, 4, 4])
    _assert_all_grads(gen, (gen(torch.randn(6, 6), e) * w).sum())
    critic = Critic(GRID, [4, 8, 8], 16)
    _assert_all_grads(critic, (critic(x, e) * torch.randn(6)).sum())
    reg = EnergyRegressor(GRID, SMALL_REG)
    _assert_all_grads(reg, ((reg(x) - e) ** 2).sum())
    bib = BIBAE(GRID, SMALL_BIBAE)
    recon, mu, logvar, _ = bib(x, e)
    _assert_all_grads(bib, (recon * w).sum() + mu.sum() + logvar.sum())
    lc = LatentCritic(5, [16, 16])
    _assert_all_grads(lc, (lc(torch.randn(6, 5)) * torch.randn(6)).sum())
    mc = MainCritic(GRID, SMALL_BIBAE)
    _assert_all_grads(mc, (mc(MainCritic.pair(x, x.flip(0)), e) * torch.randn(6)).sum())
    pp = PostProcessor(GRID, [8, 8])
    _assert_all_grads(pp, (pp(x, e) * w).sum())


def test_generator_gets_gradient_through_critic_and_regressor() -> None:
    """The generator's loss reaches it through the critic's score and the frozen constrainer."""
    task = _task("wgan")
    x, e = toy_showers(8)
    before = {k: v.clone() for k, v in task.modules()["generator"].state_dict().items()}
    reg_before = weights_hash({"r": task.modules()["regressor"]})
    logs = task.train_step((x, e), 0)
    after = task.modules()["generator"].state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert weights_hash({"r": task.modules()["regressor"]}) == reg_before  # the constrainer stays frozen
    assert {"loss", "critic_loss", "gp", "generator_loss", "regressor_mse"} <= set(logs)


# ------------------------------------------------------------------------------------------- gradient penalty
class LinearCritic(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor, e: torch.Tensor | None = None) -> torch.Tensor:
        return (x.flatten(1) * self.w.flatten()).sum(1)


def test_gradient_penalty_analytic_linear_critic() -> None:
    torch.manual_seed(0)
    real, fake, e = torch.rand(16, *GRID), torch.rand(16, *GRID), torch.rand(16)
    w = torch.randn(*GRID) * 0.3
    gp = gradient_penalty(LinearCritic(w), real, fake, e, lambda_gp=10.0)
    expected = 10.0 * (w.norm() - 1) ** 2
    assert gp.item() == pytest.approx(expected.item(), rel=1e-5)
    # a 1-Lipschitz critic with unit gradient everywhere: no penalty
    unit = LinearCritic(w / w.norm())
    assert gradient_penalty(unit, real, fake, e).item() == pytest.approx(0.0, abs=1e-8)
    # without conditions (latent critic call convention)
    assert gradient_penalty(LinearCritic(w), real, fake, None, 3.0).item() == pytest.approx(3 * expected.item() / 10,
                                                                                          rel=1e-5)
    # the penalty is differentiable in the critic's parameters: d/dw lambda(|w|-1)^2 = 2 lambda (|w|-1) w/|w|
    crit = LinearCritic(w.clone())
    gradient_penalty(crit, real, fake, e).backward()
    assert torch.allclose(crit.w.grad, 20.0 * (w.norm() - 1) * w / w.norm(), atol=1e-5)


def test_gradient_penalty_nonlinear_matches_hand_computation() -> None:
    """f(x) = 0.5 |x|^2 has gradient x_hat, so the penalty is lambda * mean((|x_hat| - 1)^2) with the same alpha."""

    def quad(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return 0.5 * x.flatten(1).pow(2).sum(1)

    real, fake, e = torch.rand(8, 2, 3), torch.rand(8, 2, 3) * 0.1, torch.rand(8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        alpha = torch.rand(8, 1, 1)
    torch.manual_seed(3)
    gp = gradient_penalty(quad, real, fake, e, 10.0)  # type: ignore[arg-type]
    x_hat = alpha * real + (1 - alpha) * fake
    expected = 10.0 * ((x_hat.flatten(1).norm(dim=1) - 1) ** 2).mean()
    assert gp.item() == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------- MMD
def test_mmd_and_sorted_hit_mmd() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(64, 4), torch.randn(64, 4)
    assert abs(mmd(a, b).item()) < 0.5 * mmd(a, b + 2.0).item()
    x, _ = toy_showers(16)
    perm = torch.randperm(math.prod(GRID))
    shuffled = x.flatten(1)[:, perm].reshape(x.shape)
    # only the hit spectrum counts, not where the hits are
    assert sorted_hit_mmd(x, shuffled, 30).item() == pytest.approx(sorted_hit_mmd(x, x, 30).item(), abs=1e-5)
    assert sorted_hit_mmd(x, 2.0 * x, 30).item() > sorted_hit_mmd(x, x, 30).item() + 0.1
    assert torch.isfinite(sorted_hit_mmd(x, x, 10_000))  # k larger than the grid is clipped


# ------------------------------------------------------------------------------------------- training
def _eval(task: TrainTask, data: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    return task.eval_step(data)


def _train(task: TrainTask, data: tuple[torch.Tensor, torch.Tensor], steps: int, bs: int = 16) -> None:
    n = data[0].shape[0]
    for step in range(steps):
        lo = (step * bs) % n
        task.train_step(tuple(t[lo : lo + bs] for t in data), step)


def test_regressor_training_reduces_loss() -> None:
    torch.manual_seed(0)
    data = toy_showers(64)
    task = _task("regressor")
    before = _eval(task, data)["loss"]
    _train(task, data, 40)
    assert _eval(task, data)["loss"] < 0.5 * before


def test_bibae_training_reduces_reconstruction() -> None:
    torch.manual_seed(0)
    data = toy_showers(64, fluctuate=False)
    task = _task("bibae")
    before = _eval(task, data)
    _train(task, data, 30)
    after = _eval(task, data)
    # the hits head's reconstruction term is a negative log-likelihood (nats per shower, ~1.3k here): it
    # falls (by ~25 nats in these 30 seeded steps), but not towards 0 (occupancy and energies have entropy)
    assert after["recon"] < 0.99 * before["recon"]
    assert {"loss", "kl", "mmd", "w_latent", "w_main"} <= set(after)


class DistortingAE(nn.Module):
    """Stands in for a trained BIB-AE whose showers have the right shape but the wrong hit-energy spectrum
    (cells compressed as 0.3 sqrt(E)): the situation the post-processor exists to fix."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, e: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, ...]:
        z = torch.zeros(x.shape[0], 2)
        return 0.3 * x.sqrt(), z, z, z


def test_postprocess_training_reduces_sorted_hit_mmd_with_bibae_frozen() -> None:
    torch.manual_seed(0)
    data = toy_showers(64)
    recon_pp = SMALL_PP.model_copy(update={"input": "recon"})  # DistortingAE only reconstructs
    task = PostProcessTask(DistortingAE(), PostProcessor(GRID, [16, 16]), recon_pp)
    before = _eval(task, data)
    _train(task, data, 60)
    after = _eval(task, data)
    assert after["sorted_hit_mmd"] < 0.7 * before["sorted_hit_mmd"]
    assert {"loss", "esum", "recon"} <= set(after)
    # with a real BIB-AE from the registry: trains, and the BIB-AE stays frozen (weights and eval mode)
    task = _task("postprocess")
    frozen = weights_hash({"b": task.modules()["bibae"]})
    _train(task, data, 3)
    assert weights_hash({"b": task.modules()["bibae"]}) == frozen
    assert not task.modules()["bibae"].training
    assert all(p.grad is None for p in task.modules()["bibae"].parameters())


def test_wgan_runs_and_critic_moves() -> None:
    torch.manual_seed(0)
    data = toy_showers(32)
    task = _task("wgan")
    before = _eval(task, data)
    losses = [task.train_step(tuple(t[i * 8 : (i + 1) * 8] for t in data), i)["critic_loss"] for i in range(4)]
    after = _eval(task, data)
    assert all(math.isfinite(v) for v in losses) and len(set(losses)) == 4
    assert after["loss"] != before["loss"]
    assert {"loss", "critic_real", "critic_fake", "esum_ratio", "regressor_mse"} <= set(after)
    assert _eval(task, data) == after  # evaluation noise is private and fixed


def test_wgan_exact_resume_through_trainer(tmp_path: Path) -> None:
    train, val = toy_showers(32, seed=1), toy_showers(8, seed=2)

    def trainer(outdir: Path, max_steps: int) -> Trainer:
        cfg = TrainerConfig(max_steps=max_steps, batch_size=8, eval_every=2, checkpoint_every=2, seed=11)
        return Trainer(_task("wgan"), cfg, outdir, train_data=train, val_data=val, progress=False)

    ref = trainer(tmp_path / "a", 6)
    ref_result = ref.fit()
    first = trainer(tmp_path / "b", 4)  # stops (and checkpoints) on an evaluation step, as the reference
    first.fit()
    second = trainer(tmp_path / "b", 6)
    result = second.fit(resume=True)
    assert result.step == 6
    assert weights_hash(second.task.modules()) == weights_hash(ref.task.modules())
    assert result.history == ref_result.history
    # sensitive: without the RNG states (noise, GP interpolation) the weights differ
    no_rng = trainer(tmp_path / "c", 6)
    no_rng.load(tmp_path / "b" / "checkpoints" / "step_00000004.pt", restore_rng=False)
    no_rng.fit()
    assert weights_hash(no_rng.task.modules()) != weights_hash(ref.task.modules())


# ------------------------------------------------------------------------------------------- ONNX
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.export's own pytree deprecation notice
@pytest.mark.parametrize("name", ["wgan", "bibae", "postprocess"])
def test_sampler_onnx_export_parity(name: str, tmp_path: Path) -> None:
    cfg = {"wgan": SMALL_WGAN, "bibae": SMALL_BIBAE, "postprocess": SMALL_PP}[name]
    grid = (5, 4, 3)
    mods = MODELS[name].modules_on(cfg, grid, seed=3)
    sampler = MODELS[name].sampler_on(mods, cfg, grid)
    width = latent_dim(cfg) + 1
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(sampler, (torch.randn(2, width),), str(path), input_names=["input"], output_names=["output"],
                      dynamo=True, external_data=False, verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    inp = np.concatenate([rng.standard_normal((7, width - 1)), rng.uniform(0.1, 1.0, (7, 1))], axis=1)
    inp = inp.astype(np.float32)
    got = sess.run(None, {"input": inp})[0]
    with torch.no_grad():
        expected = sampler(torch.from_numpy(inp)).numpy()
    assert got.shape == expected.shape == (7, math.prod(grid))
    assert np.abs(got - expected).max() < 1e-4


# ------------------------------------------------------------------------------------------- bad input
def test_bad_input_one_line_errors() -> None:
    task = _task("bibae")
    x, e = toy_showers(4, grid=(8, 6, 7))
    with pytest.raises(DataError, match=r"grid shape \(8, 6, 7\).*built for \(8, 6, 6\)"):
        task.train_step((x, e), 0)
    with pytest.raises(ConfigError, match="needs a trained regressor"):
        MODELS["wgan"].task_on(SMALL_WGAN, GRID, seed=0, aux_modules=None)
    # the constraint switched off: no regressor needed
    no_reg = SMALL_WGAN.model_copy(update={"regressor_weight": 0.0})
    assert "regressor" not in MODELS["wgan"].task_on(no_reg, GRID, seed=0, aux_modules=None).modules()
    other_grid = MODELS["regressor"].modules_on(SMALL_REG, (8, 6, 7))["regressor"]
    with pytest.raises(ConfigError, match="regressor was trained on grid"):
        MODELS["wgan"].task_on(SMALL_WGAN, GRID, seed=0, aux_modules={"regressor": other_grid})
    with pytest.raises(ConfigError, match="unknown model type"):
        get_model_type("gan")
    with pytest.raises(ConfigError, match="cannot generate showers"):
        MODELS["regressor"].sampler_on({}, SMALL_REG, GRID)
    with pytest.raises(ConfigError, match="no latent space"):
        latent_dim(SMALL_REG)
    with pytest.raises(ConfigError, match="three positive sizes"):
        Generator((8, 6), 4, [4])
    for err in (DataError, ConfigError):
        assert "\n" not in str(err("x", fix="y"))
