"""The CaloChallenge classifier test: can a DNN tell the candidate from the reference?

Follows CaloChallenge/homepage ``code/evaluate.py``: a fully connected network (LeakyReLU) is trained with
binary cross-entropy to separate reference (label 1) from candidate (label 0) showers; the samples are cut
to equal size and split 60/20/20 into train, selection and evaluation sets; one epoch is kept by its
selection-set score, its output is calibrated on the selection set, and on the evaluation set we report

* the ROC AUC (of the raw output by default: calibration is monotone, so it does not change the ranking;
  the calibrated AUC is reported too, ties from isotonic steps pull it slightly towards 0.5), and
* CaloChallenge's JSD estimate ``(log 2 - BCE_calibrated) / log 2`` in [0, 1] (it scatters around 0,
  and may dip below, for indistinguishable samples; 1 means perfectly separable).

Two recipes:

``fast`` (:class:`ClassifierConfig` defaults, for every validation on CPUs)
    2 hidden layers of 256 with dropout 0.2, float32, Adam at 1e-3 with batch 256, early stopping on the
    selection loss (patience 3, at most 20 epochs), Platt calibration, standardised inputs.  Low-level
    inputs: every voxel as a fraction u of the incident energy, compressed with ``log1p(u / 1e-3)``
    (linear below 0.1 % of E_inc, logarithmic above, so the shower core does not drown the periphery),
    plus log10 E_inc.  On 10k vs 10k simulated showers this scale beat both CaloChallenge's linear u and
    a steeper ``log1p(u / 1e-5)`` on a different detector (AUC 0.974 vs 0.967 and 0.970), and kept some
    sensitivity to a 3 % energy-scale shift (0.53; linear 0.55, steeper 0.50).  High level: the vector of
    :func:`mlfastsim.showers.validation.observables.high_level_features`.
``calochallenge`` (:data:`mlfastsim.showers.validation.calochallenge.OFFICIAL_CLASSIFIER`, numbers to quote)
    the official network: an input layer and two more hidden layers, all 2048 wide (3 hidden layers),
    LeakyReLU, no dropout, Adam at 2e-4, batch 1000, 50 epochs with the best selection-set *accuracy*
    kept (stop at accuracy 1), isotonic calibration, float64, the official (unstandardised) inputs, and
    the AUC of the calibrated output, as the official script prints it.  Slow on CPUs (about 10^14
    floating-point operations for 10k vs 10k low-level showers); meant for a GPU or for high-level
    inputs.

Robustness (a classifier never stops a validation).  Standardisation floors each feature's spread at
:data:`STD_FLOOR_FRACTION` of the typical spread and clips standardised inputs at ±:data:`INPUT_CLIP`: a
voxel that is nearly constant on the training split (one tiny deposit) otherwise turns into a 1e4-sigma
input on the other splits and drove logits to -1.5e29, which made the calibration return NaN.  Logits
are made finite and clipped at ±:data:`LOGIT_CLIP` before calibration.  Calibration: Platt scaling by
default, because isotonic regression on a selection set of a few thousand showers overfits and biases
the JSD of two identical samples to -0.03..-0.06 (Platt: |JSD| < 0.001).  Randomness comes from one seed:
a local ``torch.Generator`` for splits and batches and ``torch.manual_seed`` for weights and dropout,
inside :func:`torch.random.fork_rng` so the caller's global RNG state is left untouched.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score, roc_curve

from mlfastsim.core.errors import DataError
from mlfastsim.showers.io.formats import ShowerData
from mlfastsim.showers.validation.metrics import auc_null

VOXEL_FRACTION_SCALE = 1e-3
# A feature's standardisation spread is at least this fraction of the median spread of all features.
STD_FLOOR_FRACTION = 1e-2
# Standardised inputs are clipped to this many (floored) standard deviations.
INPUT_CLIP = 50.0
# Logits are made finite and clipped to this before calibration (sigmoid(40) = 1 - 4e-18).
LOGIT_CLIP = 40.0


@dataclass(frozen=True)
class ClassifierConfig:
    """Hyper-parameters of the classifier test (defaults: the fast recipe, sized for 10k vs 10k on 2 cores)."""

    hidden: int = 256
    n_layers: int = 2  # hidden layers in all
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 20
    patience: int | None = 3  # epochs without selection-loss improvement before stopping; None: never
    min_delta: float = 1e-4  # selection-loss improvement (nats) that counts for early stopping
    selection: str = "loss"  # keep the epoch with the lowest selection loss, or "accuracy" (CaloChallenge)
    calibration: str = "platt"  # "platt" (logistic fit on the logit) or "isotonic" (CaloChallenge)
    dtype: str = "float32"  # or "float64" (CaloChallenge)
    standardise: bool = True  # robust standardisation with the training split's statistics
    auc_from: str = "raw"  # "raw" network output or "calibrated" (what CaloChallenge prints)
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    threads: int | None = None  # None: the CPUs this process may use
    max_train_seconds: float | None = None  # stop training early after this wall time (best epoch kept)


@dataclass
class ClassifierResult:
    """What one classifier run found (the first five fields go into metrics.json)."""

    auc: float
    auc_calibrated: float
    jsd: float
    accuracy: float
    best_epoch: int
    epochs: int
    n_train: int
    n_eval: int
    n_features: int
    seconds: float
    roc_fpr: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    roc_tpr: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    auc_null_sd: float = 0.0  # spread of the AUC of an uninformative classifier on this evaluation set
    recipe: str = "fast"

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "auc": self.auc,
            "auc_floor": 0.5,
            "auc_floor_sd": self.auc_null_sd,
            "recipe": self.recipe,
            "auc_calibrated": self.auc_calibrated,
            "jsd": self.jsd,
            "accuracy": self.accuracy,
            "best_epoch": self.best_epoch,
            "epochs": self.epochs,
            "n_train": self.n_train,
            "n_eval": self.n_eval,
            "n_features": self.n_features,
            "seconds": self.seconds,
        }


def default_threads() -> int:
    """CPUs available to this process (affinity-aware, as in containers and Slurm jobs)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Set torch's intra-op thread count for a block and restore it afterwards."""
    previous = torch.get_num_threads()
    wanted = n if n is not None else default_threads()
    torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------- inputs
def low_level_inputs(data: ShowerData) -> np.ndarray:
    """(N, n_voxels + 1) float32: log1p of voxel / E_inc over 1e-3, then log10 E_inc (see module doc)."""
    e_inc = data.energies.astype(np.float32)[:, None]
    x = np.empty((len(data), data.showers.shape[1] + 1), dtype=np.float32)
    np.divide(data.showers, e_inc * np.float32(VOXEL_FRACTION_SCALE), out=x[:, :-1])
    np.log1p(x[:, :-1], out=x[:, :-1])
    x[:, -1] = np.log10(e_inc[:, 0])
    return x


class _DNN(torch.nn.Module):
    def __init__(self, n_in: int, hidden: int, n_layers: int, dropout: float) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        width = n_in
        for _ in range(n_layers):
            layers += [torch.nn.Linear(width, hidden), torch.nn.LeakyReLU(), torch.nn.Dropout(dropout)]
            width = hidden
        layers.append(torch.nn.Linear(width, 1))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def _split(
    n_per_class: int, fractions: tuple[float, float, float], gen: torch.Generator
) -> list[torch.Tensor]:
    """Per-class permutation cut into train/selection/evaluation index sets."""
    perm = torch.randperm(n_per_class, generator=gen)
    n_train = int(fractions[0] * n_per_class)
    n_sel = int(fractions[1] * n_per_class)
    return [perm[:n_train], perm[n_train : n_train + n_sel], perm[n_train + n_sel :]]


@torch.no_grad()
def _logits(model: torch.nn.Module, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)]) if len(x) else torch.zeros(0)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def finite_logits(z: np.ndarray) -> np.ndarray:
    """Logits with NaN mapped to 0 and everything clipped to ±:data:`LOGIT_CLIP` (ranking kept inside)."""
    return np.clip(np.nan_to_num(np.asarray(z, dtype=np.float64), nan=0.0, posinf=LOGIT_CLIP, neginf=-LOGIT_CLIP),
                   -LOGIT_CLIP, LOGIT_CLIP)


def robust_scale(x_train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and floored spread of each feature on the training split (see the module docstring).

    The spread is floored at :data:`STD_FLOOR_FRACTION` of the median non-zero spread over features (and
    a constant feature gets the median spread), so no feature is divided by ~0.
    """
    mean = x_train.mean(dim=0)
    std = x_train.std(dim=0) if len(x_train) > 1 else torch.zeros_like(mean)
    positive = std[std > 0]
    typical = positive.median() if positive.numel() else torch.ones((), dtype=std.dtype)
    floor = STD_FLOOR_FRACTION * typical
    std = torch.where(std > 0, torch.maximum(std, floor), typical)
    return mean, std


def calibrate(
    logits_fit: np.ndarray, labels_fit: np.ndarray, logits: np.ndarray, *, method: str
) -> np.ndarray:
    """Calibrated probabilities for ``logits``, fitted on a held-out (``logits_fit``, ``labels_fit``) set.

    ``isotonic`` is CaloChallenge's choice (a monotone step function of the sigmoid output, flexible but
    noisy on small selection sets: under the null it pushes the JSD estimate below 0 by a few 0.01 at
    1000s of showers); ``platt`` fits p = sigmoid(a z + b) (two parameters, nearly unbiased under the null,
    but it cannot fix a non-monotone miscalibration shape).
    """
    if method == "isotonic":
        iso = IsotonicRegression(out_of_bounds="clip", y_min=1e-6, y_max=1.0 - 1e-6)
        iso.fit(_sigmoid(logits_fit), labels_fit)
        return np.asarray(iso.predict(_sigmoid(logits)), dtype=np.float64)
    if method == "platt":
        a, b = 1.0, 0.0
        y = labels_fit
        for _ in range(50):  # Newton-Raphson on the 2-parameter logistic log-likelihood
            p = _sigmoid(a * logits_fit + b)
            w = np.clip(p * (1.0 - p), 1e-12, None)
            grad = np.array([np.sum((p - y) * logits_fit), np.sum(p - y)])
            hess = np.array(
                [[np.sum(w * logits_fit**2), np.sum(w * logits_fit)], [np.sum(w * logits_fit), np.sum(w)]]
            ) + 1e-9 * np.eye(2)
            step = np.linalg.solve(hess, grad)
            a, b = a - step[0], b - step[1]
            if np.max(np.abs(step)) < 1e-10:
                break
        return _sigmoid(a * logits + b)
    raise ValueError(f"unknown calibration {method!r} (use 'isotonic' or 'platt')")


def train_classifier(
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    config: ClassifierConfig = ClassifierConfig(),
    seed: int = 0,
    recipe: str = "fast",
) -> ClassifierResult:
    """Train and evaluate the reference-vs-candidate classifier on two (N, F) input arrays.

    The larger sample is cut (randomly) to the size of the smaller one so that the classes are balanced,
    as the JSD estimate from the cross-entropy assumes equal priors.  Raises :class:`DataError` for
    unusable inputs (shapes, fewer than 20 showers); the caller records that as "unavailable".
    """
    if reference.ndim != 2 or candidate.ndim != 2 or reference.shape[1] != candidate.shape[1]:
        raise DataError(
            f"classifier inputs have shapes {reference.shape} and {candidate.shape}",
            field="showers",
            fix="compare samples on the same mesh",
        )
    n = min(len(reference), len(candidate))
    if n < 20:
        raise DataError(
            f"the classifier test needs at least 20 showers per sample, got {n}",
            field="showers",
            fix="use larger samples or run without the classifier (--no-classifier)",
        )
    for name, value, allowed in (("selection", config.selection, ("loss", "accuracy")),
                                 ("dtype", config.dtype, ("float32", "float64")),
                                 ("auc_from", config.auc_from, ("raw", "calibrated"))):
        if value not in allowed:
            raise ValueError(f"ClassifierConfig.{name} must be one of {allowed}, got {value!r}")
    tdtype = torch.float64 if config.dtype == "float64" else torch.float32
    np_dtype = np.float64 if config.dtype == "float64" else np.float32
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    with torch_threads(config.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pick_r = torch.randperm(len(reference), generator=gen)[:n].sort().values.numpy()
        pick_c = torch.randperm(len(candidate), generator=gen)[:n].sort().values.numpy()
        parts_r = _split(n, config.split, gen)
        parts_c = _split(n, config.split, gen)

        src_r = torch.from_numpy(np.ascontiguousarray(reference, dtype=np_dtype))
        src_c = torch.from_numpy(np.ascontiguousarray(candidate, dtype=np_dtype))

        def gather(k: int) -> tuple[torch.Tensor, torch.Tensor]:
            # rows copied once, straight into the split's tensor (no intermediate arrays)
            idx_r = torch.from_numpy(pick_r[parts_r[k].numpy()])
            idx_c = torch.from_numpy(pick_c[parts_c[k].numpy()])
            x = torch.empty((len(idx_r) + len(idx_c), src_r.shape[1]), dtype=tdtype)
            torch.index_select(src_r, 0, idx_r, out=x[: len(idx_r)])
            torch.index_select(src_c, 0, idx_c, out=x[len(idx_r) :])
            y = torch.cat([torch.ones(len(idx_r), dtype=tdtype), torch.zeros(len(idx_c), dtype=tdtype)])
            return x, y

        x_train, y_train = gather(0)
        x_sel, y_sel = gather(1)
        x_eval, y_eval = gather(2)
        if config.standardise:
            mean, std = robust_scale(x_train)
            for x in (x_train, x_sel, x_eval):
                x.sub_(mean).div_(std).clamp_(-INPUT_CLIP, INPUT_CLIP)
        for x in (x_train, x_sel, x_eval):  # a non-finite input would poison every weight it touches
            torch.nan_to_num_(x, nan=0.0, posinf=INPUT_CLIP, neginf=-INPUT_CLIP)

        model = _DNN(x_train.shape[1], config.hidden, config.n_layers, config.dropout).to(tdtype)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        best_score, best_epoch, best_state, epochs = -math.inf, 0, copy.deepcopy(model.state_dict()), 0
        for epoch in range(1, config.max_epochs + 1):
            model.train()
            order = torch.randperm(len(x_train), generator=gen)
            for i in range(0, len(order), config.batch_size):
                idx = order[i : i + config.batch_size]
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x_train[idx]), y_train[idx]).backward()
                opt.step()
            epochs = epoch
            sel_logits = _logits(model, x_sel)
            correct = (sel_logits > 0) == (y_sel > 0.5)
            if config.selection == "accuracy":
                score, margin = float(correct.double().mean()), 0.0
            else:
                loss = float(loss_fn(sel_logits, y_sel))
                score, margin = (-loss if math.isfinite(loss) else -math.inf), config.min_delta
            if score > best_score + margin:
                best_score, best_epoch, best_state = score, epoch, copy.deepcopy(model.state_dict())
            elif config.patience is not None and epoch - best_epoch >= config.patience:
                break
            if bool(torch.all(correct)):
                break  # perfectly separated (CaloChallenge stops here too): more epochs change nothing
            if (
                config.max_train_seconds is not None
                and time.perf_counter() - start > config.max_train_seconds
            ):
                break
        model.load_state_dict(best_state)
        raw_sel = finite_logits(_logits(model, x_sel).double().numpy())
        raw_eval = finite_logits(_logits(model, x_eval).double().numpy())
    y_sel_np = y_sel.numpy().astype(np.float64)
    y_eval_np = y_eval.numpy().astype(np.float64)
    p_cal = np.clip(calibrate(raw_sel, y_sel_np, raw_eval, method=config.calibration), 1e-6, 1.0 - 1e-6)
    p_cal = np.where(np.isfinite(p_cal), p_cal, 0.5)
    bce = float(-np.mean(y_eval_np * np.log(p_cal) + (1.0 - y_eval_np) * np.log(1.0 - p_cal)))
    score_for_auc = p_cal if config.auc_from == "calibrated" else raw_eval
    fpr, tpr, _ = roc_curve(y_eval_np, score_for_auc)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 400)).astype(int))
    n_pos = int(y_eval_np.sum())
    return ClassifierResult(
        auc=float(roc_auc_score(y_eval_np, score_for_auc)),
        auc_calibrated=float(roc_auc_score(y_eval_np, p_cal)),
        jsd=float((math.log(2.0) - bce) / math.log(2.0)),
        accuracy=float(np.mean((p_cal > 0.5) == (y_eval_np > 0.5))),
        best_epoch=best_epoch,
        epochs=epochs,
        n_train=len(x_train),
        n_eval=len(x_eval),
        n_features=int(x_train.shape[1]),
        seconds=time.perf_counter() - start,
        roc_fpr=fpr[keep],
        roc_tpr=tpr[keep],
        auc_null_sd=auc_null(n_pos, len(y_eval_np) - n_pos)[1],
        recipe=recipe,
    )
