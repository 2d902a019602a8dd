"""``mlfastsim lartpc ...``: simulate events, tile them into xy files, join TPCs, train and apply networks."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mlfastsim.cli.common import ConfigOpt, SchedulerOpt, SetOpt, WorkersOpt, parallel_cli, parse_ints
from mlfastsim.core.errors import ConfigError

# pydantic, torch and the workflow are imported inside the commands: `--help` stays fast.

app = typer.Typer(help="LArTPC: simulate, make-batches (tiling), join-tpcs, train (deghosting / charge).",
                  no_args_is_help=True)
console = Console()


def _bars() -> bool:
    """Progress bars on a terminal only: in logs and pipes a failing run then prints just its one error line."""
    return sys.stderr.isatty()


@app.command()
def simulate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    n_events: Annotated[int | None, typer.Option("--n-events", "-n", help="Number of events.")] = None,
    tpcs: Annotated[str | None, typer.Option("--tpcs", help="TPC ids side by side along z, e.g. 1,5,9.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (each event derives its own).")] = None,
    noise_mev: Annotated[float | None, typer.Option("--noise-mev", help="Noise per wire and tick, MeV.")] = None,
    threshold_mev: Annotated[float | None, typer.Option("--threshold-mev", help="Zero-suppression threshold.")]
    = None,
    workers: Annotated[int | None, typer.Option(help="Local Dask workers (processes).")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Address of an existing Dask scheduler.")] = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Directory of parsed files.")] = None,
) -> None:
    """Simulate events (muons, protons, showers) and write one parsed file per event and TPC."""
    from mlfastsim.core.config import load_config
    from mlfastsim.lartpc.simulate import SimulateConfig, simulate_to_dir

    cfg = load_config(SimulateConfig, config, cli={
        "n_events": n_events, "tpc_ids": parse_ints(tpcs, "--tpcs"), "seed": seed, "noise_mev": noise_mev,
        "threshold_mev": threshold_mev, "parallel.workers": workers, "parallel.scheduler": scheduler,
        "output_dir": output_dir}, overrides=set_ or [])
    stats = simulate_to_dir(cfg, progress=_bars())
    console.print(f"[green]wrote[/] {stats['files']} parsed files ({stats['events']} events x {len(cfg.tpc_ids)} "
                  f"TPCs, {stats['empty_tpcs']} empty) to {cfg.output_dir}")


@app.command("make-batches")
def make_batches(
    input_dir: Annotated[Path | None, typer.Option("--input-dir", "-i", help="Directory of parsed files.")] = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Directory for xy files.")] = None,
    tpc: Annotated[int | None, typer.Option("--tpc", "-t", help="TPC number to process.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", help="Events per xy file.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", "-n", help="numba threads for tiling.")] = None,
    downsample: Annotated[str | None, typer.Option(help="Downsampling (ticks,y,z), e.g. 8,4,4.")] = None,
    save_pix: Annotated[bool, typer.Option("--save-pix", help="Also write the 2D wire-plane pixels.")] = False,
    x_type: Annotated[str | None, typer.Option("--x-type", help="Features: wire, shared or both.")] = None,
    y_type: Annotated[str | None, typer.Option("--y-type", help="Truth: charge, or none for data.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo batches that already exist.")] = False,
    workers: WorkersOpt = None,
    scheduler: SchedulerOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Tile parsed events into sparse xy files, one Dask task per batch.

    Batches already written are skipped, so a rerun resumes."""
    from mlfastsim.core.config import load_config
    from mlfastsim.lartpc.tiling import MakeBatchesConfig, process_xy

    cfg = load_config(MakeBatchesConfig, config, cli={
        "input_dir": input_dir, "output_dir": output_dir, "tpc": tpc, "batch_size": batch_size, "threads": threads,
        "downsample": parse_ints(downsample, "--downsample", 3), "save_pix": True if save_pix else None,
        "x_type": x_type, "y_type": y_type, "overwrite": True if overwrite else None,
        **parallel_cli(workers, scheduler)}, overrides=set_ or [])
    s = process_xy(cfg, progress=_bars())
    console.print(f"[green]done[/] TPC {cfg.tpc}: {s.events} events in {s.batches_written} new xy file(s), "
                  f"{s.batches_skipped} skipped (already done), {s.empty_events} empty event(s) skipped; "
                  f"ghost fraction {s.ghost_fraction:.3f}, {s.lost_true_voxels} true voxel(s) not tiled; "
                  f"{s.events_per_second:.1f} events/s")


@app.command("join-tpcs")
def join_tpcs_cmd(
    xy_dir: Annotated[Path, typer.Argument(help="Directory of per-TPC xy files.", show_default=False)],
    tpcs: Annotated[str, typer.Option("--tpcs", help="TPCs to merge, e.g. 1,5,9.")],
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Default XY_DIR/joined_1-5-9.")]
    = None,
) -> None:
    """Merge the per-TPC images of each event into one image."""
    from mlfastsim.lartpc.tiling import join_tpcs

    ids = parse_ints(tpcs, "--tpcs")
    assert ids is not None
    outs = join_tpcs(xy_dir, ids, output_dir, progress=_bars())
    console.print(f"[green]wrote[/] {len(outs)} joined xy file(s) to {outs[0].parent if outs else output_dir}")


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML config (configs/lartpc/*.yaml).", show_default=False)],
    epoch: Annotated[int | None, typer.Argument(help="With --resume: the epoch to resume from.",
                                                show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last (or EPOCH's) checkpoint.")]
    = False,
    set_: SetOpt = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Run directory.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
) -> None:
    """Train a deghosting or charge network (or, without data.train_i, apply a checkpoint): --resume [EPOCH]."""
    from mlfastsim.core import distributed as dist_utils
    from mlfastsim.core.config import load_config
    from mlfastsim.lartpc.config import LArTPCTrainConfig
    from mlfastsim.lartpc.train import run

    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if epoch is not None and not resume:
        raise ConfigError(f"unexpected argument {epoch}", field="EPOCH", fix="write --resume EPOCH")
    cfg = load_config(LArTPCTrainConfig, config, cli={"output_dir": output_dir}, overrides=set_ or [])
    if resume and cfg.inference_only:
        raise ConfigError("--resume is for training runs; this config has no data.train_i", file=config,
                          field="--resume", fix="drop --resume")
    result = run(cfg, resume=epoch if (resume and epoch is not None) else resume, progress=_bars())
    if dist_utils.is_main():
        last = result.summaries[-1] if result.summaries else {}
        keys = dict.fromkeys((cfg.metric, "efficiency", "rejection", "purity", "charge_resolution", "charge_bias",
                              "val_loss"))
        shown = ", ".join(f"{k} {last[k]:.4g}" for k in keys if k in last)
        where = f"checkpoint {result.last_checkpoint}" if result.mode == "train" else f"model {result.last_checkpoint}"
        console.print(f"[green]done[/] {result.mode}"
                      + (f" {result.epochs} epoch(s)" if result.mode == "train" else "")
                      + (f", {result.transferred} tensors transferred" if result.transferred else "")
                      + f": {shown or 'no truth, predictions only'}; {where}; outputs in {result.output_dir}")
    dist_utils.cleanup()
