"""Belle II selective background simulation: throughput, memory and filter quality, printed as a table.

    OMP_NUM_THREADS=1 python benchmarks/bench_belle2.py --events 4000 --test-events 2000 --steps 300 \
        --memmap-gb 1.0 --workdir /tmp/bench_belle2

Stages and figures:
  produce      events/s with 1 and 2 Dask workers (wall clock, chunked, identical output)
  preprocess   events/s
  memmap       write MB/s and peak RSS above baseline while concatenating copies of the particle array
               into a file of --memmap-gb (out of core: RSS must stay far below the file size)
  stream       training-input throughput GB/s and peak RSS reading that memmap in random batches through
               the prefetching reader, page cache dropped first (posix_fadvise DONTNEED) so reads hit disk
  train        samples/s per model for --steps steps (batch --batch-size), CPU, one thread
  filter       CPU ms/event of preprocessing + inference vs the measured expensive stage
  quality      per model: AUC, speed-up at 95 % retention, worst chi2/ndf of skim variables (threshold vs
               weighted sampling) on --test-events fresh events
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch


class PeakRSS:
    """Samples this process's resident set size (from /proc) in a thread; peak above the starting value."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakRSS:
        self.base = self.rss()
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.base) / 1e6


def drop_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=4000)
    ap.add_argument("--test-events", type=int, default=2000)
    ap.add_argument("--chunk-size", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--memmap-gb", type=float, default=1.0)
    ap.add_argument("--models", default="resnet,gnn,particle,decay")
    ap.add_argument("--workdir", type=Path, default=Path("bench_belle2"))
    ap.add_argument("--skip-workers2", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from mlfastsim.belle2.apply import apply_filter
    from mlfastsim.belle2.config import ApplyConfig, EvaluateConfig, PreprocessConfig, ProduceConfig, TrainConfig
    from mlfastsim.belle2.evaluate import evaluate
    from mlfastsim.belle2.memmaps import PrefetchingReader, create_memmap, open_memmap
    from mlfastsim.belle2.preprocess import preprocess_file
    from mlfastsim.belle2.produce import produce
    from mlfastsim.belle2.train import train_from_config

    wd = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str]] = []

    # ---------------------------------------------------------------- produce
    train_h5, test_h5 = wd / "train.h5", wd / "test.h5"
    t0 = time.perf_counter()
    s1 = produce(ProduceConfig(n_events=args.events, chunk_size=args.chunk_size, seed=1, output=train_h5),
                 progress=False)
    w1 = time.perf_counter() - t0
    rows.append(("produce, 1 worker", f"{args.events / w1:.0f} events/s",
                 f"gen {s1['gen_cpu_s_per_event'] * 1e3:.2f} ms + expensive {s1['sim_cpu_s_per_event'] * 1e3:.2f} ms "
                 f"CPU/event, pass {s1['pass_fraction']:.3f}, "
                 f"dropped B BF {s1['decay_table']['dropped_fraction_B']:.3f}"))
    if not args.skip_workers2:
        t0 = time.perf_counter()
        produce(ProduceConfig(n_events=args.events, chunk_size=args.chunk_size, seed=1, output=wd / "train_w2.h5",
                              parallel={"workers": 2}), progress=False)
        w2 = time.perf_counter() - t0
        rows.append(("produce, 2 workers", f"{args.events / w2:.0f} events/s", "incl. Dask LocalCluster start-up"))
    produce(ProduceConfig(n_events=args.test_events, chunk_size=args.chunk_size, seed=2, output=test_h5),
            progress=False)

    # ---------------------------------------------------------------- preprocess
    pre = wd / "pre" / "train"
    t0 = time.perf_counter()
    preprocess_file(PreprocessConfig(input=train_h5, output_dir=pre), progress=False)
    wp = time.perf_counter() - t0
    rows.append(("preprocess", f"{args.events / wp:.0f} events/s", "all input types, incl. decay strings"))

    # ---------------------------------------------------------------- memmap (training inputs)
    mm = wd / "mm"
    for key in ("decay", "particle", "pdg", "mother_pdg", "mother_index", "y"):
        create_memmap(str(pre / f"{key}.npy"), mm / f"{key}.memmap", progress=False)

    # ---------------------------------------------------------------- big memmap: write and stream
    part = np.load(pre / "particle.npy", mmap_mode="r")
    copies = max(1, int(np.ceil(args.memmap_gb * 1e9 / part.nbytes)))
    big = wd / "big.memmap"
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        info = create_memmap([pre / "particle.npy"] * copies, big, progress=False)
        ww = time.perf_counter() - t0
    size_mb = info["bytes"] / 1e6
    rows.append(("memmap write", f"{size_mb / ww:.0f} MB/s",
                 f"{size_mb:.0f} MB file, peak RSS +{rss.delta_mb:.0f} MB"))
    drop_page_cache(big)
    arr = open_memmap(big)
    n = arr.shape[0]

    class _Clock:
        """Stands in for the trainer: the reader prefetches batch_indices(step + 1)."""

        def __init__(self) -> None:
            self.step, self.total_steps = 0, n // args.batch_size

        def batch_indices(self, step: int) -> torch.Tensor:
            return torch.randperm(n, generator=torch.Generator().manual_seed(step))[: args.batch_size]

    reader = PrefetchingReader([arr], np.arange(n), [torch.float32], prefetch=2)
    clock = _Clock()
    reader.bind(clock)
    col = reader.columns()[0]
    steps = min(clock.total_steps, 4000)
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        for s in range(steps):
            clock.step = s
            col[clock.batch_indices(s)]
        wr = time.perf_counter() - t0
    reader.close()
    gb = steps * args.batch_size * arr[0].nbytes / 1e9
    rows.append(("memmap stream (random batches)", f"{gb / wr:.3f} GB/s",
                 f"{steps} batches of {args.batch_size}, cold cache, peak RSS +{rss.delta_mb:.0f} MB of a "
                 f"{size_mb:.0f} MB file"))
    big.unlink()

    # ---------------------------------------------------------------- train, filter, quality
    data = {k: mm / f"{k}.memmap" for k in ("decay", "particle", "pdg", "mother_pdg", "mother_index", "y")}
    for model in args.models.split(","):
        out = wd / f"model_{model}"
        cfg = TrainConfig.model_validate({
            "data": data, "model": {"name": model},
            "trainer": {"max_steps": args.steps, "batch_size": args.batch_size, "eval_every": max(args.steps // 4, 1),
                        "checkpoint_every": args.steps, "learning_rate": 2e-3},
            "output_dir": out, "tracking": {"dir": wd / "runs"}})
        _, summary = train_from_config(cfg, progress=False)
        rows.append((f"train {model}", f"{summary['samples_per_s']:.0f} samples/s",
                     f"{summary['n_parameters']} parameters, val AUC {summary.get('val_auc', float('nan')):.3f}"))
        ckpt = out / "checkpoints" / f"step_{args.steps:08d}.pt"
        a = apply_filter(ApplyConfig(input=test_h5, checkpoint=ckpt, output=wd / f"scores_{model}.h5"), progress=False)
        m = evaluate(EvaluateConfig(events=test_h5, scores=wd / f"scores_{model}.h5", output_dir=wd / f"eval_{model}"))
        t = m["times_s_per_event"]
        chi_t = max(b["threshold_chi2_ndf"] for b in m["bias"].values())
        chi_w = max(b["weighted_chi2_ndf"] for b in m["bias"].values())
        rows.append((f"filter {model}", f"{a['filter_cpu_s_per_event'] * 1e3:.3f} ms/event",
                     f"vs expensive stage {t['expensive_stage'] * 1e3:.3f} ms/event, generation "
                     f"{t['generation'] * 1e3:.3f} ms/event"))
        rows.append((f"quality {model}", f"AUC {m['auc']:.3f}",
                     f"speed-up {m['speedup_at_retention']:.2f} at {m['retention_achieved']:.1%} retention "
                     f"(keeps {m['keep_fraction_at_retention']:.1%}; "
                     f"perfect filter {m['max_speedup_perfect_filter']:.2f}); "
                     f"worst chi2/ndf threshold {chi_t:.2f} vs weighted {chi_w:.2f}"))

    width = max(len(r[0]) for r in rows)
    print(f"\n{'stage'.ljust(width)}  {'figure':>22}  notes")
    for name, fig, note in rows:
        print(f"{name.ljust(width)}  {fig:>22}  {note}")
    (wd / "bench.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
