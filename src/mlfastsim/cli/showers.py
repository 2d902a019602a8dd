"""``mlfastsim showers ...``: simulate, convert and validate calorimeter showers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from mlfastsim.cli.common import (
    ConfigOpt,
    SchedulerOpt,
    SetOpt,
    WorkersOpt,
    parallel_cli,
    parse_floats,
    parse_range,
)
from mlfastsim.core.errors import ConfigError

# Everything heavier than typer and rich (pydantic configs, torch, the workflows) is imported inside the
# commands, so `mlfastsim --help` and a mistyped option answer in well under 2 s.

app = typer.Typer(help="Calorimeter showers: simulate, convert, validate.", no_args_is_help=True)
console = Console()


@app.command()
def simulate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    detector: Annotated[str | None, typer.Option(help="Detector preset (SiW, SciPb, PbWO4, FCCeeSiW) or YAML.")] = None,
    mesh: Annotated[str | None, typer.Option(help="Mesh preset (ds2, par04, ds3), binning XML or YAML.")] = None,
    particle: Annotated[str | None, typer.Option(help="electron, photon, or pion (hadron showers).")] = None,
    grid: Annotated[str | None, typer.Option(help="Pions: Cartesian grid preset (hcal48) or YAML.")] = None,
    calorimeter: Annotated[str | None, typer.Option(help="Pions: hadron calorimeter (steel_scint).")] = None,
    energy_gev: Annotated[str | None, typer.Option("--energy-gev", help="Energies in GeV, e.g. 1,10,100.")] = None,
    energy_range_gev: Annotated[
        str | None, typer.Option("--energy-range-gev", help="Log-uniform energy range in GeV, e.g. 1:1000.")
    ] = None,
    angle_deg: Annotated[str | None, typer.Option("--angle-deg", help="Incidence angles in degrees, e.g. 90.")] = None,
    angle_range_deg: Annotated[
        str | None, typer.Option("--angle-range-deg", help="Uniform angle range in degrees, e.g. 50:90.")
    ] = None,
    n_per_point: Annotated[int | None, typer.Option(help="Showers per (energy, angle) point, or in total for ranges.")]
    = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    chunk_size: Annotated[int | None, typer.Option(help="Showers per task (fixes the per-chunk seeds).")] = None,
    workers: WorkersOpt = None,
    scheduler: SchedulerOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output HDF5 file (native format).")] = None,
) -> None:
    """Simulate reference showers: electrons/photons (Grindhammer-Peters) or pions (two-component hadronic)."""
    from mlfastsim.core.config import load_config
    from mlfastsim.showers.config import SimulateConfig
    from mlfastsim.showers.pipeline import simulate_to_file

    cfg = load_config(
        SimulateConfig,
        config,
        cli={
            "detector": detector,
            "mesh": mesh,
            "particle": particle,
            "grid": grid,
            "calorimeter": calorimeter,
            "energies_gev": parse_floats(energy_gev, "--energy-gev"),
            "energy_range_gev": parse_range(energy_range_gev, "--energy-range-gev"),
            "angles_deg": parse_floats(angle_deg, "--angle-deg"),
            "angle_range_deg": parse_range(angle_range_deg, "--angle-range-deg"),
            "n_per_point": n_per_point,
            "seed": seed,
            "chunk_size": chunk_size,
            **parallel_cli(workers, scheduler),
            "output": output,
        },
        overrides=set_ or [],
    )
    data = simulate_to_file(cfg, progress=True)
    etot = data.showers.sum(axis=1) / data.energies
    console.print(
        f"[green]wrote[/] {cfg.output}: {len(data)} showers, {data.mesh.describe()} mesh, "
        f"E_tot/E_inc = {etot.mean():.3f} ± {etot.std():.3f}"
    )


@app.command()
def convert(
    inputs: Annotated[list[Path], typer.Argument(help="Input file(s).", show_default=False)],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    from_: Annotated[str | None, typer.Option("--from", help="Input layout: calochallenge, par04, hits, native.")]
    = None,
    to: Annotated[str | None, typer.Option("--to", help="Output layout: native, calochallenge, par04.")] = None,
    binning: Annotated[Path | None, typer.Option(help="CaloChallenge binning XML giving the mesh.")] = None,
    mesh: Annotated[str | None, typer.Option(help="Mesh preset or YAML (instead of --binning).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output file (directory for par04).")] = None,
    workers: WorkersOpt = None,
    scheduler: SchedulerOpt = None,
) -> None:
    """Convert shower files between layouts (CaloChallenge, Par04, hits) and the native format.

    One Dask task per input file with --workers/--scheduler; a finished output is skipped on a rerun."""
    from mlfastsim.core.config import load_config
    from mlfastsim.showers.config import ConvertConfig
    from mlfastsim.showers.pipeline import convert_to_file

    cfg = load_config(
        ConvertConfig,
        config,
        cli={"source_format": from_, "target_format": to, "inputs": [str(p) for p in inputs], "output": output,
             "binning": binning, "mesh": mesh, **parallel_cli(workers, scheduler)},
        overrides=set_ or [],
    )
    data, skipped = convert_to_file(cfg, progress=True)
    if data is None or skipped:
        console.print(f"[green]done[/] {cfg.output} is up to date (same inputs and settings): nothing to do")
        return
    console.print(f"[green]wrote[/] {cfg.output}: {len(data)} showers, {data.mesh.describe()} mesh")


@app.command()
def validate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    reference: Annotated[Path | None, typer.Option(help="Reference sample (e.g. Geant4).")] = None,
    candidate: Annotated[Path | None, typer.Option(help="Candidate sample (e.g. a generative model).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output directory.")] = None,
    binning: Annotated[Path | None, typer.Option(help="CaloChallenge binning XML (mesh of both files).")] = None,
    mesh: Annotated[str | None, typer.Option(help="Mesh preset or YAML (instead of --binning).")] = None,
    no_classifier: Annotated[bool, typer.Option("--no-classifier", help="Skip the classifier test.")] = False,
    classifier: Annotated[str | None, typer.Option(
        "--classifier", metavar="fast|calochallenge",
        help="fast: our quick network (default); calochallenge: the official network and inputs "
             "(2048 x 3, 50 epochs, float64; slow on CPUs), for numbers to quote.")] = None,
    binning_mode: Annotated[str | None, typer.Option(
        "--binning-mode", metavar="adaptive|calochallenge",
        help="calochallenge: also bin every CaloChallenge histogram exactly as the official code does, "
             "beside the adaptive values.")] = None,
    match_conditions: Annotated[bool, typer.Option(
        "--match-conditions", help="Subsample both samples to the same (energy, angle) points first.")] = False,
    exclude_empty: Annotated[
        bool, typer.Option("--exclude-empty", help="Drop showers with no energy instead of refusing them.")
    ] = False,
    seed: Annotated[int | None, typer.Option(help="Random seed (classifier).")] = None,
    threshold_mev: Annotated[float | None, typer.Option(
        "--threshold-mev", help="Zero cells below this energy in both samples (a readout threshold). "
        "Default: the geometry's (0.0151515 on CaloChallenge meshes, 0.5 MIP on hadron grids); 0: off.")] = None,
    tracking: Annotated[str | None, typer.Option(help="Tracking backend: local, mlflow, wandb.")] = None,
) -> None:
    """Compare a candidate sample with a reference: observables, metrics, classifier, plots, HTML report."""
    from mlfastsim.core.config import load_config
    from mlfastsim.showers.config import ValidateConfig
    from mlfastsim.showers.pipeline import validate_files
    from mlfastsim.showers.validation.validate import summary_table

    if no_classifier and classifier not in (None, "off"):
        raise ConfigError(f"--no-classifier and --classifier {classifier} contradict each other",
                          field="--classifier", fix="pass one of them")
    cfg = load_config(
        ValidateConfig,
        config,
        cli={"reference": reference, "candidate": candidate, "output": output, "binning": binning, "mesh": mesh,
             "classifier": "off" if no_classifier else classifier, "binning_mode": binning_mode,
             "match_conditions": True if match_conditions else None,
             "exclude_empty": True if exclude_empty else None, "seed": seed, "threshold_mev": threshold_mev,
             "tracking.backend": tracking},
        overrides=set_ or [],
    )
    metrics = validate_files(cfg, progress=True)
    console.print(summary_table(metrics))
    matched = metrics.get("matched_conditions")
    if matched:
        console.print(f"matched conditions {matched['how']}: kept {matched['kept_reference']} of "
                      f"{matched['of_reference']} reference and {matched['kept_candidate']} of "
                      f"{matched['of_candidate']} candidate showers")
    for level, res in (metrics.get("classifier") or {}).items():
        if res.get("available", True) is False:
            console.print(f"[yellow]classifier ({level}) unavailable:[/] {res['reason']}")
    console.print(f"[green]wrote[/] {cfg.output / 'metrics.json'} and {cfg.output / 'report.html'}")


@app.command("example-data")
def example_data(
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the files.")] = Path("examples"),
    n_showers: Annotated[int, typer.Option("--n-showers", min=1, help="Showers per file (and angle).")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
) -> None:
    """Write small inputs in every layout `showers convert` reads (CaloChallenge, Par04, hits), simulated."""
    from mlfastsim.showers.examples import write_example_data

    files = write_example_data(output, n_showers=n_showers, seed=seed)
    console.print(f"[green]wrote[/] {', '.join(str(p) for p in files)} (simulated showers, not Geant4)")


@app.command()
def presets() -> None:
    """List the detector, mesh and hadron-grid presets with the material facts the simulators use."""
    from mlfastsim.showers.geometry import DETECTOR_PRESETS, MESH_PRESETS

    # compact tables that fit 80 columns (units in the titles, long descriptions listed below)
    t = Table(title="Detectors (X0, R_M: mm; Ec: MeV; resolution a/sqrt(E) + b; depth in X0)", box=box.SIMPLE_HEAD,
              pad_edge=False)
    for col in ("name", "X0", "R_M", "Ec", "Z_eff", "f_samp", "a", "b", "depth"):
        t.add_column(col, no_wrap=True)
    for det in DETECTOR_PRESETS.values():
        t.add_row(det.name, f"{det.x0:.2f}", f"{det.rm:.2f}", f"{det.ec:.2f}", f"{det.z_eff:.1f}",
                  f"{det.sampling_fraction:.4f}", f"{det.resolution_a:.3f}", f"{det.constant_term:.3f}",
                  f"{det.depth_mm / det.x0:.1f}")
    console.print(t)
    for det in DETECTOR_PRESETS.values():
        console.print(f"  {det.name}: {det.description}", highlight=False)
    m = Table(title="Meshes (mm)", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("name", "n_r x n_phi x n_z", "voxels", "dr", "dz", "radius"):
        m.add_column(col, no_wrap=True)
    for name, mesh in MESH_PRESETS.items():
        m.add_row(name, f"{mesh.n_r} x {mesh.n_phi} x {mesh.n_z}", str(mesh.n_voxels), f"{mesh.size_r}",
                  f"{mesh.size_z}", f"{mesh.radius:.2f}")
    console.print(m)
    from mlfastsim.showers.geometry import GRID_PRESETS
    from mlfastsim.showers.sim.hadronic import HADRON_CALORIMETERS

    g = Table(title="Hadron grids (--particle pion; cell, pitch: mm; MIP, threshold: MeV)",
              box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("grid", "z x y x x", "cell", "pitch", "calorimeter", "MIP", "thresh.", "depth"):
        g.add_column(col, no_wrap=True)
    for (name, grid), calo in zip(GRID_PRESETS.items(), HADRON_CALORIMETERS.values(), strict=False):
        g.add_row(name, f"{grid.n_z}x{grid.n_y}x{grid.n_x}", f"{grid.cell_x:g}x{grid.cell_y:g}",
                  f"{grid.cell_z:g}", calo.name, f"{calo.mip_mev:.2f}", f"{calo.threshold_mev:.2f}",
                  f"{calo.depth_lambda:.1f} λ_I")
    console.print(g)


# ------------------------------------------------------------------------------------ MetaHEP road
GpuIdsOpt = Annotated[str | None, typer.Option("--gpu-ids", help="GPUs to use, e.g. 0,1 (default: CPU).")]
GpuMemOpt = Annotated[
    int | None, typer.Option("--max-gpu-memory-allocation", help="Cap on CUDA memory per process, MB.")
]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="CPU threads for torch.")]


def _device_cli(gpu_ids: str | None, max_mem: int | None, threads: int | None) -> dict[str, object]:
    from mlfastsim.core.devices import parse_gpu_ids

    return {"device.gpu_ids": parse_gpu_ids(gpu_ids), "device.max_gpu_memory_mb": max_mem,
            "device.num_threads": threads}


def _train(config: Path | None, set_: list[str] | None, resume: bool, model_type: str | None,
           data: list[Path] | None, output_dir: Path | None, device_cli: dict[str, object]) -> None:
    """``showers train`` for every model type: the registry entry named by ``model.type`` does the rest."""
    from mlfastsim.core import distributed as dist_utils
    from mlfastsim.core.config import load_config
    from mlfastsim.showers.config import TrainConfig
    from mlfastsim.showers.models import MODELS
    from mlfastsim.showers.training.train import train_from_config

    if model_type is not None and model_type not in MODELS:
        raise ConfigError(f"unknown model type {model_type!r}", field="--model-type",
                          fix=f"use one of {', '.join(MODELS)} (`mlfastsim showers models` describes them)")
    cli = {"model.type": model_type, "data.files": [str(p) for p in data] if data else None,
           "output_dir": output_dir, **device_cli}
    cfg = load_config(TrainConfig, config, cli=cli, overrides=set_ or [])
    result = train_from_config(cfg, resume=resume)
    if dist_utils.is_main():
        console.print(f"[green]done[/] step {result.step}, best val loss {result.best_val_loss:.4g} at step "
                      f"{result.best_step} ({result.seconds:.1f} s); checkpoint {result.last_checkpoint}")
    dist_utils.cleanup()


ModelTypeOpt = Annotated[
    str | None, typer.Option("--model-type", help="A registered model type (`showers models` lists them).")
]
TrainDataOpt = Annotated[list[Path] | None, typer.Option("--data", help="Training file(s).")]
OutDirOpt = Annotated[Path | None, typer.Option("--output-dir", "-o", help="Run directory.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in output_dir.")]


@app.command()
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
    model_type: ModelTypeOpt = None,
    data: TrainDataOpt = None,
    output_dir: OutDirOpt = None,
    gpu_ids: GpuIdsOpt = None,
    max_gpu_memory_allocation: GpuMemOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Train a shower model: the EM VAE on one or several geometries, or a hadron model (torchrun-ready)."""
    _train(config, set_, resume, model_type, data, output_dir,
           _device_cli(gpu_ids, max_gpu_memory_allocation, threads))


def _second_stage_command(model_type: str, doc: str) -> None:
    """Register ``train-<stage>``: ``showers train`` with the model type fixed (no --model-type option)."""

    def command(
        config: ConfigOpt = None,
        set_: SetOpt = None,
        resume: ResumeOpt = False,
        data: TrainDataOpt = None,
        output_dir: OutDirOpt = None,
        gpu_ids: GpuIdsOpt = None,
        max_gpu_memory_allocation: GpuMemOpt = None,
        threads: ThreadsOpt = None,
    ) -> None:
        _train(config, set_, resume, model_type, data, output_dir,
               _device_cli(gpu_ids, max_gpu_memory_allocation, threads))

    command.__doc__ = doc
    app.command(f"train-{model_type}")(command)


_second_stage_command("regressor",
                      "Train the energy regressor the WGAN's generator loss uses as its energy constrainer.")
_second_stage_command("postprocess", "Train the BIB-AE post-processor (hit-energy spectrum) with the BIB-AE frozen.")


@app.command("meta-train")
def meta_train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint.")] = False,
    data: Annotated[list[Path] | None, typer.Option("--data", help="One file per geometry task.")] = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Run directory.")] = None,
    gpu_ids: GpuIdsOpt = None,
    max_gpu_memory_allocation: GpuMemOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Meta-train (Reptile or first-order MAML) over geometry tasks, one file per geometry."""
    from mlfastsim.core import distributed as dist_utils
    from mlfastsim.core.config import load_config
    from mlfastsim.showers.config import MetaConfig
    from mlfastsim.showers.training.meta import meta_train as run_meta

    cfg = load_config(
        MetaConfig, config,
        cli={"data.files": [str(p) for p in data] if data else None, "output_dir": output_dir,
             **_device_cli(gpu_ids, max_gpu_memory_allocation, threads)},
        overrides=set_ or [],
    )
    result = run_meta(cfg, resume=resume)
    if dist_utils.is_main():
        console.print(f"[green]done[/] {result.step} meta-steps, best val loss {result.best_val_loss:.4g} "
                      f"({result.seconds:.1f} s); checkpoint {result.last_checkpoint}")
    dist_utils.cleanup()


@app.command()
def adapt(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: Annotated[list[Path] | None, typer.Option("--data", help="Showers of the new geometry.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Pre-trained checkpoint (default: the shipped one).")]
    = None,
    study_name: Annotated[str | None, typer.Option("--study-name", help="Groups runs: runs/STUDY/RUN.")] = None,
    run_name: Annotated[str | None, typer.Option("--run-name", help="Run name (default: a timestamp).")] = None,
    adaptation_steps: Annotated[int | None, typer.Option("--adaptation-steps")] = None,
    checkpoint_step: Annotated[int | None, typer.Option("--checkpoint-step", help="Checkpoint every N steps.")]
    = None,
    plot_freq: Annotated[int | None, typer.Option("--plot-freq", help="Validation plots every N steps.")] = None,
    trainable: Annotated[str | None, typer.Option(
        "--trainable", help="Fine-tune only these parameter-name prefixes, e.g. energy,shape.out (default: all).")]
    = None,
    gpu_ids: GpuIdsOpt = None,
    max_gpu_memory_allocation: GpuMemOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Adapt a pre-trained model to a new geometry from a few hundred showers (every checkpoint kept)."""
    from mlfastsim.core.config import load_config
    from mlfastsim.showers.config import AdaptConfig
    from mlfastsim.showers.training.meta import adapt as run_adapt

    cfg = load_config(
        AdaptConfig, config,
        cli={"data.files": [str(p) for p in data] if data else None, "checkpoint": checkpoint,
             "study_name": study_name, "run_name": run_name, "adaptation_steps": adaptation_steps,
             "checkpoint_step": checkpoint_step, "plot_freq": plot_freq,
             "trainable": [t.strip() for t in trainable.split(",") if t.strip()] if trainable else None,
             **_device_cli(gpu_ids, max_gpu_memory_allocation, threads)},
        overrides=set_ or [],
    )
    result = run_adapt(cfg)
    before = "n/a" if result.unadapted_val_loss is None else f"{result.unadapted_val_loss:.4g}"
    console.print(
        f"[green]adapted[/] run {result.run_dir} in {result.seconds:.1f} s: validation loss {before} before, "
        f"best {result.best_val_loss:.4g} at step {result.best_step}; {len(result.checkpoints)} checkpoints kept "
        f"(export one with --adaptation-step N, latest or best); summary {result.summary_path}"
    )


def _step_ref(text: str | None) -> int | str | None:
    """``--adaptation-step``: a step number, or ``latest`` / ``best``."""
    if text is None or text in ("latest", "best"):
        return text
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not a step", field="--adaptation-step",
                          fix="pass a step number, latest or best") from None


@app.command()
def export(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    study_name: Annotated[str | None, typer.Option("--study-name")] = None,
    run_name: Annotated[str | None, typer.Option("--run-name", help="Default: the study's latest run.")] = None,
    adaptation_step: Annotated[str | None, typer.Option(
        "--adaptation-step", metavar="STEP|latest|best",
        help="A step, latest (default) or best (lowest validation loss).")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Export this checkpoint instead of a study's.")] = None,
    onnx_file_name: Annotated[Path | None, typer.Option("--onnx-file-name", help="Output .onnx file.")] = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", help="Where studies live (runs).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Flow models: solver steps unrolled in the graph.")]
    = None,
) -> None:
    """Export a model's decoder to ONNX (Par04 C++ inference layout) with a parity check and a JSON sidecar."""
    from mlfastsim.core.config import load_config
    from mlfastsim.showers.config import ExportConfig
    from mlfastsim.showers.inference.export import export_onnx

    cfg = load_config(
        ExportConfig, config,
        cli={"study_name": study_name, "run_name": run_name, "adaptation_step": _step_ref(adaptation_step),
             "checkpoint": checkpoint, "onnx_file_name": onnx_file_name, "output_dir": output_dir,
             "steps": steps},
        overrides=set_ or [],
    )
    path = export_onnx(cfg)
    console.print(f"[green]wrote[/] {path} and {path.with_suffix('.json')}")


@app.command()
def generate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Model checkpoint.")] = None,
    onnx: Annotated[Path | None, typer.Option(help="ONNX file from `showers export` (with its .json).")] = None,
    energy_gev: Annotated[str | None, typer.Option("--energy-gev", help="Energies in GeV, e.g. 1,10,100.")] = None,
    energy_range_gev: Annotated[str | None, typer.Option("--energy-range-gev", help="e.g. 1:1000.")] = None,
    angle_deg: Annotated[str | None, typer.Option("--angle-deg", help="Angles in degrees, e.g. 90.")] = None,
    angle_range_deg: Annotated[str | None, typer.Option("--angle-range-deg", help="e.g. 50:90.")] = None,
    n_per_point: Annotated[int | None, typer.Option(help="Showers per (energy, angle) point.")] = None,
    geometry_index: Annotated[int | None, typer.Option(help="Geometry one-hot slot (0 = adapted geometry).")]
    = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output HDF5 (native format).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Flow models: ODE solver steps (checkpoint only).")]
    = None,
) -> None:
    """Generate showers from a checkpoint or an ONNX file into the native format (validate reads it)."""
    from mlfastsim.core.config import load_config
    from mlfastsim.showers.config import GenerateConfig
    from mlfastsim.showers.inference.generate import generate_to_file

    cfg = load_config(
        GenerateConfig, config,
        cli={"checkpoint": checkpoint, "onnx": onnx, "energies_gev": parse_floats(energy_gev, "--energy-gev"),
             "energy_range_gev": parse_range(energy_range_gev, "--energy-range-gev"),
             "angles_deg": parse_floats(angle_deg, "--angle-deg"),
             "angle_range_deg": parse_range(angle_range_deg, "--angle-range-deg"), "n_per_point": n_per_point,
             "geometry_index": geometry_index, "seed": seed, "output": output, "steps": steps},
        overrides=set_ or [],
    )
    data = generate_to_file(cfg)
    console.print(f"[green]wrote[/] {cfg.output}: {len(data)} showers")


@app.command()
def tune(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    n_trials: Annotated[int | None, typer.Option("--n-trials", help="Trials run by this process.")] = None,
    storage: Annotated[str | None, typer.Option("--storage", help="Optuna storage URL (sqlite:///..., postgresql://...).")]
    = None,
    study_name: Annotated[str | None, typer.Option("--study-name")] = None,
) -> None:
    """Hyperparameter search with Optuna over any config key; several processes can share one study."""
    from mlfastsim.core.tuning import load_tune_config, run_study
    from mlfastsim.showers.config import TrainConfig
    from mlfastsim.showers.training.train import tune_objective

    overrides = list(set_ or [])
    for key, value in (("n_trials", n_trials), ("storage", storage), ("study_name", study_name)):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_tune_config(config, overrides=overrides)
    summary = run_study(cfg, tune_objective(cfg), config_model=TrainConfig)
    if summary.get("best_value") is None:
        console.print("[yellow]no trial completed[/] (all pruned or failed); see study.json")
    else:
        console.print(f"[green]best[/] {cfg.metric} = {summary['best_value']:.4g} with {summary['best_params']}")
        console.print(f"best config: {cfg.output_dir / 'best_config.yaml'}")


@app.command()
def models() -> None:
    """List the registered model types, their data and the commands each supports."""
    from mlfastsim.showers.models import MODELS
    from mlfastsim.showers.models.contract import COMMANDS

    table = Table(title="Model types (model.type / --model-type)")
    for col in ("type", "description", "data", "commands"):
        table.add_column(col)
    for name, spec in MODELS.items():
        table.add_row(name, spec.description, spec.data_config.__name__,
                      ", ".join(c for c in COMMANDS if spec.supports(c)))
    console.print(table)


@app.command()
def pretrained() -> None:
    """List the pre-trained models shipped with mlfastsim."""
    from mlfastsim.showers.pretrained import list_pretrained

    table = Table(title="Pre-trained models (use as --checkpoint pretrained:NAME)")
    for col in ("name", "model", "mesh", "particle", "energies [GeV]", "geometry slots", "file"):
        table.add_column(col)
    for entry in list_pretrained():
        lo_hi = entry.get("energy_range_gev")
        slots = entry.get("geometries")
        table.add_row(entry["name"], entry["model_type"], entry["mesh"], entry.get("particle", "?"),
                      f"{lo_hi[0]:g}-{lo_hi[1]:g}" if lo_hi else "?",
                      ", ".join(f"{k}={v}" for k, v in slots.items()) + f"; new={entry.get('new_geometry_slot', 0)}"
                      if slots else "-", entry["file"])
    console.print(table)
    for entry in list_pretrained():
        console.print(f"[bold]{entry['name']}[/]: {entry['description']} (card: {entry.get('card', '-')})")
