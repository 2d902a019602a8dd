"""Benchmark: data-parallel training throughput on CPU, 1 process vs ``torchrun`` with 2 processes (gloo).

The model is Par04-sized and VAE-like: 6480 voxels (+4 conditions) -> 100 -> 50 -> 20 -> 14 -> latent 10 and
back, with batch norm and leaky ReLU.  Every configuration trains the same global batch through the real
:class:`mlfastsim.core.trainer.Trainer` loop (DDP-wrapped under torchrun), and reports samples per second
over the steps after a warm-up, measured on rank 0 (DDP keeps the ranks in lockstep).  Rows:

* 1 process x 1 thread, and 1 process x N threads (intra-op parallelism, the usual alternative);
* torchrun N processes x 1 thread each (data parallelism, gradients all-reduced over gloo).

OpenMP threads spin-wait for each other, so the N-threads row collapses when other processes share the
cores; the load average is printed with the table for that reason.

    .venv/bin/python benchmarks/bench_ddp.py                      # global batch 256, 40 steps, N = 2
    .venv/bin/python benchmarks/bench_ddp.py --batch-size 1024 --steps 20 --nproc 4
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

N_VOXELS = 6480
N_CONDITIONS = 4  # energy, angle, 2-slot geometry one-hot
ENCODER = (100, 50, 20, 14)
LATENT = 10


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.LeakyReLU(0.01)]
    return nn.Sequential(*layers)


class ParVAE(nn.Module):
    """A Par04-sized conditional VAE: the shapes and the per-step cost of the real one, none of its physics."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = _mlp([N_VOXELS + N_CONDITIONS, *ENCODER])
        self.to_mu = nn.Linear(ENCODER[-1], LATENT)
        self.to_logvar = nn.Linear(ENCODER[-1], LATENT)
        self.decoder = nn.Sequential(_mlp([LATENT + N_CONDITIONS, *reversed(ENCODER)]),
                                     nn.Linear(ENCODER[0], N_VOXELS), nn.Sigmoid())

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.encoder(torch.cat([x, c], dim=1))
        mu, logvar = self.to_mu(h), self.to_logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        x_hat = self.decoder(torch.cat([z, c], dim=1))
        reco = torch.mean(torch.sum((x_hat - x) ** 2, dim=1))
        kl = torch.mean(-0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=1))
        return {"loss": reco + kl, "reco": reco.detach(), "kl": kl.detach()}


def vae_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    return model(*batch)


def worker(args: argparse.Namespace) -> None:
    """One training run (inside torchrun or not); rank 0 writes the throughput as JSON."""
    from mlfastsim.core import distributed as dist_utils
    from mlfastsim.core.trainer import SupervisedTask, Trainer, TrainerConfig, make_optimizer

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n = args.batch_size * 8
    x = torch.rand(n, N_VOXELS, generator=g) ** 4  # sparse-ish, like normalised shower voxels
    c = torch.rand(n, N_CONDITIONS, generator=g)
    cfg = TrainerConfig(max_steps=args.steps, batch_size=args.batch_size, eval_every=10**9,
                        checkpoint_every=10**9, seed=0, sync_batch_norm=not args.local_bn)
    torch.manual_seed(0)
    model = ParVAE()
    task = SupervisedTask(model, vae_loss, make_optimizer(model.parameters(), cfg))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(task, cfg, tmp, train_data=(x, c), progress=False)
        stamps: dict[int, float] = {}
        trainer.add_hook(1, lambda _t, step: stamps.__setitem__(step, time.perf_counter()))
        trainer.fit()
    if dist_utils.is_main():
        # from the end of step `warmup` to the end of step steps-1: the last step also evaluates and saves
        timed = args.steps - 1 - args.warmup
        seconds = stamps[args.steps - 1] - stamps[args.warmup]
        Path(args.result).write_text(json.dumps({
            "world": dist_utils.world_size(), "threads": args.threads, "steps": timed,
            "seconds": seconds, "samples_per_s": timed * args.batch_size / seconds,
        }))
    dist_utils.cleanup()


def run_config(nproc: int, threads: int, args: argparse.Namespace, local_bn: bool = False) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        worker_args = [str(Path(__file__).resolve()), "--worker", "--threads", str(threads), "--result", str(result),
                       "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        worker_args += ["--local-bn"] if local_bn else []
        launcher = [sys.executable] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run([*launcher, *worker_args], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"run with {nproc} process(es) failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256, help="global batch (split over the processes)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--nproc", type=int, default=2, help="processes for the torchrun rows")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--local-bn", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.steps <= args.warmup + 2:
        parser.error("--steps must exceed --warmup by at least 3")
    if args.batch_size % args.nproc:
        parser.error("--batch-size must be a multiple of --nproc")

    n_params = sum(p.numel() for p in ParVAE().parameters())
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"Par04-size VAE ({n_params / 1e6:.2f} M parameters), global batch {args.batch_size}, "
          f"{args.steps - 1 - args.warmup} timed steps after {args.warmup} warm-up, torch {torch.__version__}, "
          f"{cpus} CPU cores, load average {os.getloadavg()[0]:.1f} (other work on the cores skews every row)")
    # last row: batch norm over each rank's slice (trainer.sync_batch_norm: false) instead of the global batch
    rows = [(1, 1, False), (1, args.nproc, False), (args.nproc, 1, False), (args.nproc, 1, True)]
    results = [(nproc, threads, local, run_config(nproc, threads, args, local)) for nproc, threads, local in rows]
    base = results[0][3]["samples_per_s"]
    print(f"{'processes':>9} {'threads/proc':>12} {'batch/proc':>10} {'batch norm':>10} {'ms/step':>8} "
          f"{'samples/s':>10} {'speed-up':>8}")
    for nproc, threads, local, r in results:
        ms = 1000 * r["seconds"] / r["steps"]
        bn = "-" if nproc == 1 else ("per rank" if local else "global")
        print(f"{nproc:>9} {threads:>12} {args.batch_size // nproc:>10} {bn:>10} {ms:>8.1f} "
              f"{r['samples_per_s']:>10.0f} {r['samples_per_s'] / base:>7.2f}x")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
