"""The Belle II decay table, resolved into flat arrays a vectorised generator can index.

``decaylanguage`` parses the ``DECAY_BELLE2.DEC`` file it ships (aliases and ``CDecay`` charge
conjugates expanded by the parser); ``particle`` supplies PDG codes, masses, widths and lifetimes.
Not every mode can be generated here: EvtGen hands quark and string final states (``PYTHIA``/``JETSET``
models, products such as ``u anti-d`` or ``string``) to a fragmentation program we do not have, and a few
names in the table (``Xsu``, ``rndmflav``, exotic B** states) are unknown to ``particle``.  Those modes are
dropped, the remaining branching fractions of each mother are renormalised to one, and the dropped
fraction is reported per mother and for the B mesons, so a user knows what the sample is missing.

Only species reachable from the Upsilon(4S) through kept modes are resolved.  Long-lived particles
(c*tau >= 1 cm: K_S0, Lambda, Sigma, Xi, Omega, charged pions and kaons...) are stable at generator
level, as in Belle II where Geant4 decays them; they are never decayed even if the table lists modes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlfastsim.core.errors import InputFileError

#: Centre-of-mass energy of SuperKEKB at the Upsilon(4S) (MeV) and the Belle II boost of the CMS frame.
SQRT_S_MEV = 10580.0
BETA_GAMMA = 0.28
ROOT_NAME = "Upsilon(4S)"
#: Particles with a decay length c*tau at least this long (mm) are stable at generator level.
STABLE_CTAU_MM = 10.0
#: Models whose products go through string fragmentation, which this generator cannot do.
FRAGMENTATION_MODELS = ("PYTHIA", "JETSET", "LUNDAREA")
#: Masses of resonances are drawn from a Breit-Wigner truncated to this many full widths around the pole.
BW_WIDTHS = 3.0
#: bump when the resolution rules change, so stale disk caches are not used
RESOLVER_VERSION = "1"


@dataclass
class DecayTable:
    """Flat arrays over *species* (a decay-table name: a particle or an alias with its own modes)."""

    names: list[str]
    pdg: np.ndarray  # (S,) int64
    mass: np.ndarray  # (S,) MeV, pole mass
    width: np.ndarray  # (S,) MeV (0 for stable or narrow)
    ctau: np.ndarray  # (S,) mm (inf for stable)
    charge: np.ndarray  # (S,) int8
    stable: np.ndarray  # (S,) bool: never decayed by the generator
    mass_lo: np.ndarray  # (S,) MeV, lowest mass the species may be given (threshold of its kept modes)
    mass_hi: np.ndarray  # (S,) MeV
    # modes: for species s, modes mode_start[s]:mode_start[s+1]; daughters of mode m in
    # mode_daughters[dau_start[m]:dau_start[m+1]] (species indices)
    mode_start: np.ndarray
    mode_bf: np.ndarray  # (M,) renormalised per mother
    mode_threshold: np.ndarray  # (M,) MeV, sum of the daughters' mass_lo
    dau_start: np.ndarray
    mode_daughters: np.ndarray
    mode_model: list[str]
    dropped_fraction: dict[str, float] = field(default_factory=dict)  # per mother: BF sum dropped
    root: int = 0

    @property
    def n_species(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def daughters(self, mode: int) -> np.ndarray:
        return self.mode_daughters[self.dau_start[mode] : self.dau_start[mode + 1]]

    def modes_of(self, species: int) -> range:
        return range(int(self.mode_start[species]), int(self.mode_start[species + 1]))

    def report(self) -> dict[str, object]:
        """What was dropped: the B-meson average (what a BB event misses) and the worst mothers."""
        b_names = [n for n in ("B+", "B-", "B0", "anti-B0") if n in self.dropped_fraction]
        worst = sorted(self.dropped_fraction.items(), key=lambda kv: -kv[1])[:10]
        return {
            "dec_file": "DECAY_BELLE2.DEC (decaylanguage)",
            "n_species": self.n_species,
            "n_modes": len(self.mode_bf),
            "dropped_fraction_B": float(np.mean([self.dropped_fraction[n] for n in b_names])) if b_names else 0.0,
            "dropped_fraction_per_B": {n: self.dropped_fraction[n] for n in b_names},
            "dropped_fraction_upsilon4s_non_BB": self.dropped_fraction.get(ROOT_NAME, 0.0),
            "worst_mothers": dict(worst),
        }


def default_dec_file() -> Path:
    from decaylanguage.data import basepath

    return Path(str(basepath / "DECAY_BELLE2.DEC"))


def cache_dir() -> Path:
    """Where resolved tables are cached (``$MLFASTSIM_CACHE`` or ``$XDG_CACHE_HOME/mlfastsim``)."""
    root = os.environ.get("MLFASTSIM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "mlfastsim")
    return Path(root) / "belle2"


@functools.lru_cache(maxsize=4)
def load_decay_table(dec_file: str | None = None) -> DecayTable:
    """The resolved decay table, cached in memory per process and on disk per DEC-file content.

    Parsing the DEC file takes seconds, and every Dask worker and CLI command needs the table; the
    disk cache (plain ``.npz`` + JSON, keyed by the SHA-256 of the DEC file and this resolver's version)
    makes that milliseconds.  A cache that cannot be read or written is ignored.
    """
    path = Path(dec_file) if dec_file else default_dec_file()
    if not path.is_file():
        raise InputFileError("decay file does not exist", file=path, fix="pass a .DEC file or leave it unset")
    key = hashlib.sha256(path.read_bytes() + RESOLVER_VERSION.encode()).hexdigest()[:20]
    cached = _read_cache(key)
    if cached is not None:
        return cached
    table = _parse_and_resolve(path)
    _write_cache(key, table)
    return table


_ARRAYS = ("pdg", "mass", "width", "ctau", "charge", "stable", "mass_lo", "mass_hi", "mode_start", "mode_bf",
           "mode_threshold", "dau_start", "mode_daughters")


def _read_cache(key: str) -> DecayTable | None:
    base = cache_dir() / f"decay_table-{key}"
    try:
        meta = json.loads(base.with_suffix(".json").read_text(encoding="utf-8"))
        with np.load(base.with_suffix(".npz"), allow_pickle=False) as z:
            arrays = {k: z[k] for k in _ARRAYS}
        return DecayTable(names=list(meta["names"]), mode_model=list(meta["mode_model"]),
                          dropped_fraction=dict(meta["dropped_fraction"]), root=int(meta["root"]), **arrays)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(key: str, table: DecayTable) -> None:
    from mlfastsim.core.io import atomic_path, atomic_write_json

    base = cache_dir() / f"decay_table-{key}"
    try:
        with atomic_path(base.with_suffix(".npz")) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **{k: getattr(table, k) for k in _ARRAYS})
        atomic_write_json(base.with_suffix(".json"), {"names": table.names, "mode_model": table.mode_model,
                                                      "dropped_fraction": table.dropped_fraction,
                                                      "root": table.root})
    except Exception:  # a read-only or full cache directory must never break a run
        return


def _parse_and_resolve(path: Path) -> DecayTable:
    from decaylanguage import DecFileParser

    try:
        parser = DecFileParser(str(path))
        parser.parse()
    except Exception as exc:  # lark raises many types; all mean "not a valid DEC file"
        raise InputFileError(f"cannot parse decay file ({type(exc).__name__})", file=path,
                             fix="pass a valid EvtGen .DEC file") from exc
    return _Resolver(parser, path).resolve()


class _Resolver:
    def __init__(self, parser: object, path: Path) -> None:
        from particle.converters import EvtGenName2PDGIDBiMap

        self.parser = parser
        self.path = path
        self.name2pdg = EvtGenName2PDGIDBiMap
        self.aliases: dict[str, str] = parser.dict_aliases()  # type: ignore[attr-defined]
        self.mothers = set(parser.list_decay_mother_names())  # type: ignore[attr-defined]
        self.props: dict[str, tuple[int, float, float, float, int] | None] = {}
        self.state: dict[str, str] = {}  # name -> "visiting" | "ok" | "bad"
        self.modes: dict[str, list[tuple[float, list[str], str]]] = {}
        self.dropped: dict[str, float] = {}

    def particle_props(self, name: str) -> tuple[int, float, float, float, int] | None:
        """(pdg, mass, width, ctau, charge) or None if ``particle`` does not know the name."""
        if name in self.props:
            return self.props[name]
        from particle import Particle
        from particle.pdgid import is_diquark, is_quark

        real = self.aliases.get(name, name)
        out: tuple[int, float, float, float, int] | None = None
        try:
            pid = int(self.name2pdg[real])
            p = Particle.from_pdgid(pid)
            neutrino = abs(pid) in (12, 14, 16)
            if not (is_quark(pid) or is_diquark(pid) or abs(pid) == 21) and (p.mass is not None or neutrino):
                width = float(p.width or 0.0)
                # PDG gives no width for some narrow states (D_s*+, K0): they decay promptly if the table
                # has modes for them; c*tau = inf only for truly stable particles (no modes, no width)
                if p.ctau is not None and p.width is not None:
                    ctau = float(p.ctau)
                else:
                    ctau = math.inf if not self.raw_modes(name) else 0.0
                out = (pid, float(p.mass or 0.0), width, ctau, int(p.three_charge or 0) // 3)
        except Exception:  # unknown to particle: MatchingIDNotFound, ParticleNotFound, InvalidParticle
            out = None
        self.props[name] = out
        return out

    def raw_modes(self, name: str) -> list[dict]:
        for candidate in (name, self.aliases.get(name, name)):
            if candidate in self.mothers:
                return [self.parser._decay_mode_details(d) for d in self.parser._find_decay_modes(candidate)]  # type: ignore[attr-defined]
        return []

    def visit(self, name: str) -> bool:
        """Resolve ``name``: True if it is stable or has at least one kept mode."""
        st = self.state.get(name)
        if st == "ok":
            return True
        if st in ("bad", "visiting"):
            return False  # a cycle in the table can never be generated
        props = self.particle_props(name)
        if props is None:
            self.state[name] = "bad"
            return False
        self.state[name] = "visiting"
        if props[3] >= STABLE_CTAU_MM:
            self.state[name] = "ok"
            self.modes[name] = []
            return True
        raw = self.raw_modes(name)
        total = sum(m["bf"] for m in raw)
        kept: list[tuple[float, list[str], str]] = []
        for m in raw:
            model = str(m["model"])
            if name == ROOT_NAME and sorted(m["fs"]) not in (["B+", "B-"], ["B0", "anti-B0"]):
                continue  # Upsilon(4S) -> B Bbar events only
            if any(tag in model.upper() for tag in FRAGMENTATION_MODELS) or m["bf"] <= 0:
                continue
            if all(self.visit(d) for d in m["fs"]):
                kept.append((float(m["bf"]), list(m["fs"]), model))
        kept_bf = sum(bf for bf, _, _ in kept)
        if not kept or kept_bf <= 0:
            self.state[name] = "bad"
            return False
        self.dropped[name] = float(1.0 - kept_bf / total) if total > 0 else 0.0
        self.modes[name] = [(bf / kept_bf, fs, model) for bf, fs, model in kept]
        self.state[name] = "ok"
        return True

    def resolve(self) -> DecayTable:
        if not self.visit(ROOT_NAME):
            raise InputFileError(f"{ROOT_NAME} has no decay to B Bbar that can be generated", file=self.path,
                                 fix="use a decay file with Upsilon(4S) -> B+ B- / B0 anti-B0")
        # Species reachable from the root through kept modes, in a deterministic (BFS) order.
        order = [ROOT_NAME]
        seen = {ROOT_NAME}
        i = 0
        while i < len(order):
            for _, fs, _ in self.modes[order[i]]:
                for d in fs:
                    if d not in seen:
                        seen.add(d)
                        order.append(d)
            i += 1
        idx = {n: k for k, n in enumerate(order)}
        props = [self.particle_props(n) for n in order]
        assert all(p is not None for p in props)
        pdg = np.array([p[0] for p in props], dtype=np.int64)  # type: ignore[index]
        mass = np.array([p[1] for p in props])  # type: ignore[index]
        width = np.array([p[2] for p in props])  # type: ignore[index]
        ctau = np.array([p[3] for p in props])  # type: ignore[index]
        charge = np.array([p[4] for p in props], dtype=np.int8)  # type: ignore[index]
        stable = np.array([not self.modes[n] for n in order])
        mode_start = [0]
        bfs: list[float] = []
        dau_start = [0]
        daus: list[int] = []
        models: list[str] = []
        for n in order:
            for bf, fs, model in self.modes[n]:
                bfs.append(bf)
                daus.extend(idx[d] for d in fs)
                dau_start.append(len(daus))
                models.append(model)
            mode_start.append(len(bfs))
        mode_start_a = np.array(mode_start, dtype=np.int64)
        dau_start_a = np.array(dau_start, dtype=np.int64)
        daus_a = np.array(daus, dtype=np.int64)
        # Mass thresholds: a species' lowest mass is the lightest of its kept modes' thresholds, so any
        # mass drawn for it leaves at least one mode open (fixed point over the decay graph).
        lo = np.where(stable | (width == 0), mass, 0.0)
        for _ in range(50):
            mode_thr = np.add.reduceat(lo[daus_a], dau_start_a[:-1]) if len(daus_a) else np.zeros(0)
            new_lo = lo.copy()
            for s in np.flatnonzero(~stable & (width > 0)):
                thr = mode_thr[mode_start_a[s] : mode_start_a[s + 1]].min()
                new_lo[s] = max(thr + 1e-3, mass[s] - BW_WIDTHS * width[s])
            if np.allclose(new_lo, lo):
                break
            lo = new_lo
        mode_thr = np.add.reduceat(lo[daus_a], dau_start_a[:-1])
        hi = np.where(width > 0, mass + BW_WIDTHS * width, mass)
        hi = np.maximum(hi, lo)
        # narrow or fixed-mass species whose pole lies below a threshold keep the pole: closed modes are
        # filtered per decay by the generator
        lo = np.where(width > 0, lo, mass)
        return DecayTable(
            names=order, pdg=pdg, mass=mass, width=width, ctau=ctau, charge=charge, stable=stable,
            mass_lo=lo, mass_hi=hi, mode_start=mode_start_a, mode_bf=np.array(bfs), mode_threshold=mode_thr,
            dau_start=dau_start_a, mode_daughters=daus_a, mode_model=models,
            dropped_fraction={n: self.dropped[n] for n in order if n in self.dropped}, root=0,
        )
