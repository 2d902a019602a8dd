"""Events from xy files, held as flat tensors with offsets so a batch is three vectorised gathers.

Every event of every matching file is loaded once (xy files are small: a tiled, downsampled event is a few
thousand voxels); ``train_i`` / ``inference_i`` then select events by their position in the sorted file
list.  The checks here are what turns a wrong file into one clear line: other downsampling than the config,
other features than the checkpoint, coordinates beyond ``model.spatial_size``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from mlfastsim.core.errors import ConfigError, DataError, InputFileError
from mlfastsim.lartpc.config import DataConfig
from mlfastsim.lartpc.geometry import TPCGeometry
from mlfastsim.lartpc.sparse import SparseTensor
from mlfastsim.lartpc.tiling import list_xy, read_xy, read_xy_attrs


@dataclass
class EventSet:
    """Concatenated events: rows ``offsets[i]:offsets[i+1]`` belong to event ``i``."""

    coords: torch.Tensor  # (N, 3) int64
    feats: torch.Tensor  # (N, F) float32, already log1p(feature / input_scale)
    charge: torch.Tensor | None  # (N,) float32 true charge (0 = ghost), None for data without truth
    offsets: torch.Tensor  # (n_events + 1,) int64
    event_ids: np.ndarray
    feature_names: list[str]
    downsample: list[int]
    sources: list[str]
    # the TPC geometry the files were tiled with, when every file holds one TPC of the same detector (what
    # the per-plane charge closure needs to put voxels back under their wires); None otherwise
    geometry: TPCGeometry | None = None

    @property
    def n_events(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def n_features(self) -> int:
        return int(self.feats.shape[1])

    def to(self, device: torch.device) -> EventSet:
        return EventSet(self.coords.to(device), self.feats.to(device),
                        None if self.charge is None else self.charge.to(device), self.offsets.to(device),
                        self.event_ids, self.feature_names, self.downsample, self.sources, self.geometry)

    def select(self, start: int, stop: int, what: str) -> EventSet:
        """Events ``[start, stop)`` as a new set (a clear error when the range runs past the data)."""
        if stop > self.n_events:
            raise ConfigError(f"range [{start}, {stop}) but the data has {self.n_events} events",
                              field=f"data.{what}", fix=f"use a range within [0, {self.n_events})")
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        return EventSet(self.coords[lo:hi], self.feats[lo:hi], None if self.charge is None else self.charge[lo:hi],
                        self.offsets[start:stop + 1] - lo, self.event_ids[start:stop], self.feature_names,
                        self.downsample, self.sources, self.geometry)

    def event_index(self) -> np.ndarray:
        """The event number (0..n_events-1) of every voxel row."""
        lens = np.diff(self.offsets.cpu().numpy())
        return np.repeat(np.arange(self.n_events), lens)

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Row indices of events ``idx`` (in that order) and each row's position in the batch."""
        idx = idx.to(self.offsets.device).long()
        starts = self.offsets[idx]
        lens = self.offsets[idx + 1] - starts
        batch = torch.repeat_interleave(torch.arange(len(idx), device=idx.device), lens)
        first = torch.cumsum(lens, 0) - lens
        rows = torch.repeat_interleave(starts - first, lens) + torch.arange(int(lens.sum()), device=idx.device)
        return rows, batch

    def batch(self, idx: torch.Tensor, spatial_size: tuple[int, int, int]) -> tuple[SparseTensor, torch.Tensor | None]:
        """The sparse input of events ``idx`` and their true charges."""
        rows, b = self.rows(idx)
        coords = torch.cat([b[:, None], self.coords[rows]], dim=1)
        x = SparseTensor(coords, self.feats[rows], spatial_size, len(idx))
        return x, None if self.charge is None else self.charge[rows]


def _matching_files(cfg: DataConfig) -> list[Path]:
    files = list_xy(cfg.data_path)
    if cfg.tpcs is not None:
        keep = set(cfg.tpcs)
        files = [p for p in files if set(read_xy_attrs(p)["tpcs"]) <= keep]
    if not files:
        raise InputFileError("no xy files found" + (f" for TPCs {cfg.tpcs}" if cfg.tpcs else ""),
                             file=", ".join(map(str, cfg.data_path)), field="data.data_path",
                             fix="point data.data_path at the output of `mlfastsim lartpc make-batches`")
    return files


def _file_geometry(path: Path) -> TPCGeometry | None:
    """The geometry attribute make-batches writes (None for joined or older files, or one that fails to parse)."""
    with h5py.File(path, "r") as f:
        text = f.attrs.get("geometry")
        tpcs = f.attrs.get("tpcs")
    if text is None or tpcs is None or len(np.atleast_1d(json.loads(tpcs) if isinstance(tpcs, str) else tpcs)) != 1:
        return None
    try:
        return TPCGeometry.model_validate(json.loads(text) if isinstance(text, str) else text)
    except (ValueError, TypeError):
        return None


def load_events(cfg: DataConfig, spatial_size: tuple[int, int, int], *, need_truth: bool) -> EventSet:
    """Every event of the matching files, checked against the config and the model's volume."""
    coords, feats, charges, ids, offsets = [], [], [], [], [0]
    names: list[str] | None = None
    files = _matching_files(cfg)
    for path in files:
        xy = read_xy(path)
        ds = [int(v) for v in xy.attrs["downsample"]]
        if ds != list(cfg.downsample):
            raise DataError(f"made with downsampling {ds} but the config says {list(cfg.downsample)}", file=path,
                            field="data.downsample",
                            fix="set data.downsample to the files' value or re-run make-batches with --downsample")
        if names is None:
            names = list(xy.attrs["feature_names"])
        elif list(xy.attrs["feature_names"]) != names:
            raise DataError(f"features {xy.attrs['feature_names']} differ from the other files' {names}", file=path,
                            field="features", fix="use xy files made with the same --x-type")
        if need_truth and xy.charge is None:
            raise DataError("no truth charge (made with --y-type none)", file=path, field="charge",
                            fix="train on files with truth; data without truth can only be run through inference")
        if len(xy.coords):
            extent = xy.coords.max(axis=0) + 1
            if np.any(extent > np.asarray(spatial_size)):
                raise ConfigError(f"the data extends to {extent.tolist()} voxels but model.spatial_size is "
                                  f"{list(spatial_size)}", file=path, field="model.spatial_size",
                                  fix=f"set model.spatial_size to at least {extent.tolist()} (grid "
                                      f"{xy.attrs['grid_shape']})")
        coords.append(xy.coords)
        feats.append(xy.feats)
        charges.append(xy.charge)
        ids.append(xy.event_ids)
        offsets.extend((xy.offsets[1:] + offsets[-1]).tolist())
    assert names is not None
    geoms = [_file_geometry(p) for p in files]
    geometry = geoms[0] if geoms and geoms[0] is not None and all(g == geoms[0] for g in geoms) else None
    has_truth = all(c is not None for c in charges)
    f = np.concatenate(feats).astype(np.float32)
    return EventSet(
        coords=torch.from_numpy(np.concatenate(coords).astype(np.int64)),
        feats=torch.log1p(torch.from_numpy(f) / cfg.input_scale),
        charge=torch.from_numpy(np.concatenate(charges).astype(np.float32)) if has_truth else None,
        offsets=torch.tensor(offsets, dtype=torch.int64),
        event_ids=np.concatenate(ids),
        feature_names=names,
        downsample=list(cfg.downsample),
        sources=[str(p) for p in files],
        geometry=geometry,
    )
