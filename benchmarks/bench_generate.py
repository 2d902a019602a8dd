"""Shower generation speed at the Par04 mesh (40 500 voxels) on the CPU: torch vs onnxruntime.

For batches of 1, 100 and 10 000 showers it prints ms/shower of

* the decoder alone: torch ``forward`` (eval, no_grad, fresh output), torch optimised (inference_mode,
  preallocated output: ``GeneratorModule.generate_into``), onnxruntime ``session.run`` (fresh output)
  and onnxruntime with IO binding into a preallocated output (what ``showers generate`` uses);
* the whole ``generate()`` call (latent draws, conditions, decoder, times E, native voxel order) from
  the checkpoint (torch) and from the exported ONNX file (which speaks Par04's voxel order, so its
  output is reordered while it is denormalised);

and the achieved FLOP rate of the decoder (2·in·out per Linear layer per shower) as a fraction of a
plain fp32 GEMM of the same shape as the last layer, ``torch.mm`` (10000x100)@(100x40500) into a
preallocated output, measured in the same run.  Timings are the best of ``--repeats`` runs (the
fastest run is the one least disturbed by other work on the machine); the load average is printed
before and after, since a busy machine slows everything and multi-threaded small products most.

The model is the default Par04 VAE with random weights (speed does not depend on the values), saved as
a checkpoint and exported through ``showers.inference.export.export_onnx``, so the ONNX file measured is what
``showers export`` writes.

    python benchmarks/bench_generate.py [--threads 2] [--batches 1,100,10000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from mlfastsim.core.checkpoint import save_checkpoint
from mlfastsim.core.export import OnnxRunner, make_session
from mlfastsim.showers.conditioning.em import EMNormalisation
from mlfastsim.showers.config import ConditioningConfig, ExportConfig, VAEConfig
from mlfastsim.showers.geometry import MESH_PRESETS
from mlfastsim.showers.inference.export import (
    GeneratorModule,
    build_generator,
    export_onnx,
    load_generator_model,
    random_generator_inputs,
)
from mlfastsim.showers.inference.generate import OnnxGenerator, generate, load_onnx_generator
from mlfastsim.showers.models import MODELS, checkpoint_meta

MESH = MESH_PRESETS["par04"]
COND = ConditioningConfig()
NORM = EMNormalisation(MESH, COND)
TARGET_MS = 0.1
TARGET_GEMM_FRACTION = 0.5


def best_seconds(fn: Callable[[], object], repeats: int, calls: int = 1) -> float:
    """Best wall time of ``repeats`` runs of ``calls`` calls, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best


def decoder_flops(gen: GeneratorModule) -> int:
    """FLOPs per shower: 2·in·out for every Linear layer (batch norm is folded in, activations are ignored)."""
    return sum(2 * m.in_features * m.out_features for m in gen.modules() if isinstance(m, torch.nn.Linear))


def gemm_rate(repeats: int) -> float:
    """FLOP/s of torch.mm (10000x100)@(100x40500) into a preallocated output."""
    a = torch.randn(10000, 100)
    b = torch.randn(40500, 100).t()  # the layout nn.Linear multiplies with
    out = torch.empty(10000, 40500)
    t = best_seconds(lambda: torch.mm(a, b, out=out), repeats)
    return 2 * 10000 * 100 * 40500 / t


def measure(batch: int, gen: GeneratorModule, onnx_gen: OnnxGenerator, session: ort.InferenceSession,
            runner: OnnxRunner, repeats: int) -> dict[str, float]:
    """ms/shower of every variant at one batch size (small batches: many calls per timed run)."""
    x = random_generator_inputs(batch, gen.latent_dim, COND, seed=batch)
    xt = torch.from_numpy(x)
    out = np.empty((batch, MESH.n_voxels), dtype=np.float32)
    out_t = torch.from_numpy(out)
    in_name = runner.signature.input_name
    calls = max(1, 400 // batch)

    def torch_forward() -> object:
        with torch.no_grad():
            return gen(xt)

    def torch_opt() -> object:
        with torch.inference_mode():
            return gen.generate_into(xt, out_t)

    per_call = {
        "torch fwd": best_seconds(torch_forward, repeats, calls),
        "torch opt": best_seconds(torch_opt, repeats, calls),
        "ORT run": best_seconds(lambda: session.run(None, {in_name: x}), repeats, calls),
        "ORT bind": best_seconds(lambda: runner(x, out), repeats, calls),
    }
    ms = {k: v / calls / batch * 1e3 for k, v in per_call.items()}
    # whole generate(): calls * batch showers in batches of `batch`
    n = batch * calls
    e = np.exp(np.random.default_rng(batch).uniform(np.log(1e3), np.log(1e6), n)).astype(np.float32)
    a = np.full(n, 90.0, dtype=np.float32)
    gen_repeats = max(1, min(repeats, 3))
    for name, source in (("gen torch", gen), ("gen ONNX", onnx_gen)):
        t = best_seconds(lambda src=source: generate(src, e, a, 0, COND, seed=1, batch_size=batch), gen_repeats)
        ms[name] = t / n * 1e3
    return ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,100,10000")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        vae = VAEConfig()
        model = MODELS["vae"].build_modules(vae, NORM)["model"]
        ckpt = save_checkpoint(Path(tmp) / "step_00000000.pt",
                               {"modules": {"model": model.state_dict()}, **checkpoint_meta(MODELS["vae"], vae, NORM)})
        onnx_path = export_onnx(ExportConfig(checkpoint=ckpt, onnx_file_name=Path(tmp) / "model.onnx"),
                                num_threads=args.threads)
        loaded = load_generator_model(ckpt)
        gen = build_generator(loaded)
        onnx_gen = load_onnx_generator(onnx_path, num_threads=args.threads)
        session = make_session(onnx_path, num_threads=args.threads)
        runner = OnnxRunner(session)
        flops = decoder_flops(gen)
        gemm = gemm_rate(args.repeats)

        print(f"Par04 mesh {MESH.describe()} = {MESH.n_voxels} voxels; decoder "
              f"{gen.input_width}->...->{gen.n_voxels}: {flops / 1e6:.2f} MFLOP/shower; {args.threads} threads")
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (others' work skews timings)")
        print(f"reference fp32 GEMM torch.mm (10000x100)@(100x40500): {gemm / 1e9:.1f} GFLOP/s")
        header = (f"{'batch':>6} | {'torch fwd':>9} {'torch opt':>9} {'ORT run':>9} {'ORT bind':>9} | "
                  f"{'gen torch':>9} {'gen ONNX':>9} | {'best GF/s':>9} {'of GEMM':>7}")
        print("ms/shower (decoder alone | whole generate() | best decoder rate)")
        print(header)
        print("-" * len(header))
        results: dict[int, float] = {}
        fractions: dict[int, float] = {}
        for batch in batches:
            ms = measure(batch, gen, onnx_gen, session, runner, args.repeats)
            best_decoder = min(ms["torch opt"], ms["ORT bind"])
            rate = flops / (best_decoder * 1e-3)
            results[batch] = best_decoder
            fractions[batch] = rate / gemm
            print(f"{batch:>6} | {ms['torch fwd']:>9.4f} {ms['torch opt']:>9.4f} {ms['ORT run']:>9.4f} "
                  f"{ms['ORT bind']:>9.4f} | {ms['gen torch']:>9.4f} {ms['gen ONNX']:>9.4f} | "
                  f"{rate / 1e9:>9.1f} {rate / gemm:>6.0%}")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        if 10000 in results:
            ok_ms = results[10000] <= TARGET_MS
            ok_frac = fractions[10000] >= TARGET_GEMM_FRACTION
            print(f"target at batch 10000: <= {TARGET_MS} ms/shower -> {results[10000]:.4f} "
                  f"({'met' if ok_ms else 'missed'}); >= {TARGET_GEMM_FRACTION:.0%} of GEMM -> "
                  f"{fractions[10000]:.0%} ({'met' if ok_frac else 'missed'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
