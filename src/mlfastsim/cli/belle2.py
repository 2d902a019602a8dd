"""``mlfastsim belle2 ...``: selective background simulation (produce, preprocess, memmap, train, apply, evaluate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mlfastsim.cli.common import ConfigOpt, SchedulerOpt, SetOpt, WorkersOpt, parallel_cli

# pydantic, torch and the workflow are imported inside the commands: `--help` stays fast.

app = typer.Typer(help="Belle II selective background simulation: a filter before the expensive simulation.",
                  no_args_is_help=True)
console = Console(soft_wrap=True)


@app.command()
def produce(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    n_events: Annotated[int | None, typer.Option("--n-events", "-n", help="Number of Upsilon(4S) events.")] = None,
    chunk_size: Annotated[int | None, typer.Option(help="Events per task (fixes the per-chunk seeds).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    dec_file: Annotated[Path | None, typer.Option(help="EvtGen .DEC file (default: DECAY_BELLE2.DEC).")] = None,
    workers: WorkersOpt = None,
    scheduler: SchedulerOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output HDF5 file.")] = None,
) -> None:
    """Generate Upsilon(4S) -> B Bbar events, run the expensive stage and the skim; write labelled tables."""
    from mlfastsim.belle2.config import ProduceConfig
    from mlfastsim.belle2.produce import produce as run
    from mlfastsim.core.config import load_config

    cfg = load_config(ProduceConfig, config, cli={
        "n_events": n_events, "chunk_size": chunk_size, "seed": seed, "dec_file": dec_file,
        **parallel_cli(workers, scheduler), "output": output}, overrides=set_ or [])
    s = run(cfg, progress=True)
    d = s["decay_table"]
    console.print(
        f"[green]wrote[/] {cfg.output}: {s['n_events']} events, {s['n_particles']} particles, "
        f"skim pass fraction {s['pass_fraction']:.3f}; CPU/event: generation {s['gen_cpu_s_per_event'] * 1e3:.2f} ms, "
        f"expensive stage {s['sim_cpu_s_per_event'] * 1e3:.2f} ms; dropped quark/string (PYTHIA/JETSET) and "
        f"unresolvable modes: {d['dropped_fraction_B']:.1%} of the B branching fraction (renormalised)")


@app.command()
def preprocess(
    input_: Annotated[Path | None, typer.Option("--input", "-i", help="Events file from belle2 produce.")] = None,
    output_dir: Annotated[Path | None, typer.Option("--output", "-o", help="Output directory for the .npy files.")]
    = None,
    keys: Annotated[list[str] | None, typer.Option("--keys", "-k", help="Input types to write (repeatable or "
                                                   "comma-separated): decay, particle, pdg, mother_pdg, "
                                                   "mother_index, y, event. Default: all.")] = None,
    max_particles: Annotated[int | None, typer.Option(help="Particles per event after padding.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Decay-string tokens per event after padding.")] = None,
    dec_file: Annotated[Path | None, typer.Option(help="The .DEC file given to produce (token vocabulary).")]
    = None,
    workers: WorkersOpt = None,
    scheduler: SchedulerOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Normalise, one-hot and tokenise generator-level events into padded .npy arrays.

    One Dask task per chunk of events with --workers/--scheduler; a finished output is skipped, a killed
    run resumes."""
    from mlfastsim.belle2.config import PreprocessConfig
    from mlfastsim.belle2.preprocess import preprocess_file
    from mlfastsim.core.config import load_config

    key_list = [k.strip() for item in keys for k in item.split(",") if k.strip()] if keys else None
    cfg = load_config(PreprocessConfig, config, cli={
        "input": input_, "output_dir": output_dir, "keys": key_list, "max_particles": max_particles,
        "max_tokens": max_tokens, "dec_file": dec_file, **parallel_cli(workers, scheduler)}, overrides=set_ or [])
    s = preprocess_file(cfg, progress=True)
    console.print(
        f"[green]wrote[/] {cfg.output_dir}: {s['events']} events ({', '.join(s['keys'])}); truncated: "
        f"{s['truncated_particles']} particle lists, {s['truncated_decay_strings']} decay strings; "
        f"unknown PDG codes -> UNK: {s['unknown_pdg_count']} {s['unknown_pdg_codes'] or ''}")


@app.command()
def memmap(
    inputs: Annotated[str | None, typer.Option("--input", "-i", help="Glob of .npy files, quoted: 'pre/*/x.npy'.")]
    = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output .memmap (+ .shape, .dtype).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Concatenate many preprocessed .npy files into one memory map, out of core."""
    from mlfastsim.belle2.config import MemmapConfig
    from mlfastsim.belle2.memmaps import create_memmap
    from mlfastsim.core.config import load_config
    from mlfastsim.core.errors import ConfigError

    cfg = load_config(MemmapConfig, config, cli={"inputs": inputs, "output": output}, overrides=set_ or [])
    if not cfg.inputs:
        raise ConfigError("no input pattern", field="--input", fix="pass -i 'DIR/*/particle.npy'")
    s = create_memmap(cfg.inputs, cfg.output, block_rows=cfg.block_rows, progress=True)
    console.print(f"[green]wrote[/] {s['output']}: shape {tuple(s['shape'])} {s['dtype']} from {len(s['files'])} "
                  f"file(s), {s['bytes'] / 1e6:.1f} MB")


@app.command()
def train(
    decay_input: Annotated[Path | None, typer.Option("--decay-input", help="Decay-string tokens memmap.")] = None,
    particle_input: Annotated[Path | None, typer.Option("--particle-input", help="Particle features memmap.")]
    = None,
    pdg_input: Annotated[Path | None, typer.Option("--pdg-input", help="PDG tokens memmap.")] = None,
    mother_pdg_input: Annotated[Path | None, typer.Option("--mother-pdg-input", help="Mother-PDG tokens memmap.")]
    = None,
    mother_index_input: Annotated[
        Path | None, typer.Option("--mother-index-input", help="Mother positions memmap (graph models).")] = None,
    y_output: Annotated[Path | None, typer.Option("--y-output", help="Skim labels memmap.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="resnet, gnn, particle, decay, or a .py file.")]
    = None,
    output_dir: Annotated[Path | None, typer.Option("--output", "-o", help="Output directory (checkpoints).")] = None,
    logdir: Annotated[Path | None, typer.Option("--logdir", "-l", help="Tracking directory.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Adam learning rate.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    gpu_ids: Annotated[str | None, typer.Option(help="GPU indices, e.g. 0 (default: CPU).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint (exact).")] = False,
    init_checkpoint: Annotated[Path | None, typer.Option(
        "--init-checkpoint", help="Fine-tune: start from this filter's weights (e.g. pre-trained OUT/best.pt).")]
    = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Train a filter network on memmapped inputs (early stopping keeps OUT/best.pt, the lowest validation loss)."""
    from mlfastsim.belle2.config import TrainConfig
    from mlfastsim.belle2.train import train_from_config
    from mlfastsim.core.config import load_config
    from mlfastsim.core.devices import parse_gpu_ids

    cfg = load_config(TrainConfig, config, cli={
        "data.decay": decay_input, "data.particle": particle_input, "data.pdg": pdg_input,
        "data.mother_pdg": mother_pdg_input, "data.mother_index": mother_index_input, "data.y": y_output,
        "model.name": model, "output_dir": output_dir, "tracking.dir": logdir, "trainer.max_steps": max_steps,
        "trainer.batch_size": batch_size, "trainer.learning_rate": learning_rate, "trainer.seed": seed,
        "device.gpu_ids": parse_gpu_ids(gpu_ids), "init_checkpoint": init_checkpoint}, overrides=set_ or [])
    from mlfastsim.core import distributed as dist_utils

    _, s = train_from_config(cfg, resume=resume, progress=True)
    if dist_utils.is_main():  # under torchrun: one summary line, from the rank that wrote the checkpoint
        console.print(f"[green]trained[/] {cfg.model.name}: {s['steps']} steps, best val loss "
                      f"{s['best_val_loss']:.4f}" + (f" at step {s['best_step']}" if "best_step" in s else "")
                      + (" (stopped early)" if s.get("stopped_early") else "")
                      + f", val AUC {s.get('val_auc', float('nan')):.4f} (best weights), "
                      f"{s['samples_per_s']:.0f} samples/s; apply {s.get('best_checkpoint') or s['last_checkpoint']}")
    dist_utils.cleanup()


@app.command()
def apply(
    input_: Annotated[Path | None, typer.Option("--input", "-i", help="Generator-level events (produce format).")]
    = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint written by belle2 train.")] = None,
    model_file: Annotated[Path | None, typer.Option(help="User model .py (for plug-in model checkpoints).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output HDF5 (scores, kept list).")] = None,
    mode: Annotated[str | None, typer.Option(help="threshold or sample (probability p, weight 1/p).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Score threshold (threshold mode).")] = None,
    min_probability: Annotated[float | None, typer.Option(help="Floor of p in sample mode (max weight 1/floor).")]
    = None,
    sample_scale: Annotated[float | None, typer.Option(help="Sample mode: p = min(1, max(scale*score, floor)).")]
    = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (sample mode).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Score events with a trained filter and keep them by threshold or by weighted sampling."""
    from mlfastsim.belle2.apply import apply_filter
    from mlfastsim.belle2.config import ApplyConfig
    from mlfastsim.core.config import load_config

    cfg = load_config(ApplyConfig, config, cli={
        "input": input_, "checkpoint": checkpoint, "model_file": model_file, "output": output, "mode": mode,
        "threshold": threshold, "min_probability": min_probability, "sample_scale": sample_scale, "seed": seed},
        overrides=set_ or [])
    s = apply_filter(cfg, progress=True)
    console.print(f"[green]wrote[/] {cfg.output}: kept {s['n_kept']}/{s['n_events']} events ({cfg.mode}), "
                  f"sum of weights {s['sum_weights']:.1f}, filter {s['filter_cpu_s_per_event'] * 1e3:.3f} ms/event")


@app.command()
def evaluate(
    events: Annotated[Path | None, typer.Option(help="Events file (truth labels, stage times, skim variables).")]
    = None,
    scores: Annotated[Path | None, typer.Option(help="Output of belle2 apply on the same events.")] = None,
    output_dir: Annotated[Path | None, typer.Option("--output", "-o", help="Output directory.")] = None,
    retention: Annotated[float | None, typer.Option(help="Fraction of passing events to keep (e.g. 0.95).")] = None,
    projected_sim_reco_s: Annotated[
        float | None, typer.Option("--projected-sim-reco-s", help="CPU s/event of the real simulation + "
                                   "reconstruction to project the speed-up onto (default 1.0, see the README).")]
    = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the weighted-sampling check.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """ROC/AUC, speed-up at fixed retention and the bias of threshold vs weighted sampling."""
    from mlfastsim.belle2.config import EvaluateConfig
    from mlfastsim.belle2.evaluate import evaluate as run
    from mlfastsim.core.config import load_config

    cfg = load_config(EvaluateConfig, config, cli={
        "events": events, "scores": scores, "output_dir": output_dir, "retention": retention,
        "projected_sim_reco_s": projected_sim_reco_s, "seed": seed}, overrides=set_ or [])
    m = run(cfg)
    chi_t = max((b["threshold_chi2_ndf"] for b in m["bias"].values()), default=float("nan"))
    chi_w = max((b["weighted_chi2_ndf"] for b in m["bias"].values()), default=float("nan"))
    console.print(f"[green]wrote[/] {cfg.output_dir}: AUC {m['auc']:.4f}; at {m['retention_achieved']:.1%} retention "
                  f"speed-up {m['speedup_at_retention']:.3f} measured (stand-in "
                  f"{m['times_s_per_event']['expensive_stage_measured'] * 1e3:.2f} ms/event), "
                  f"{m['projected']['speedup_at_retention']:.2f} projected onto "
                  f"{m['projected']['sim_reco_s_per_event']:g} s/event sim+reco; worst chi2/ndf threshold {chi_t:.2f}, "
                  f"weighted {chi_w:.2f}")
    a = m.get("as_applied")
    if a:
        console.print(f"as applied ({a['mode']}): kept {a['kept_fraction']:.1%} of events and "
                      f"{a['passing_kept_fraction']:.1%} of passing ones, speed-up {a['speedup_measured']:.3f} "
                      f"measured, {a['speedup_projected']:.2f} projected"
                      + ("; scores squashed towards 0: the filter is over-confident (overfit)"
                         if a["scores_squashed"] else ""))
    console.print(m["verdict"])
