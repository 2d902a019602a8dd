"""Sample-level losses the hadron models share: MMD with a kernel mixture, and the sorted-hit MMD.

Kept apart from :mod:`.bibae` and :mod:`.wgan` because both use them (the post-processor's spectrum term,
the WGAN's auxiliary generator terms) and neither may import the other.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def mmd(a: torch.Tensor, b: torch.Tensor, *, base: float | torch.Tensor | None = None,
        scales: Sequence[float] = (0.2, 0.5, 1.0, 2.0, 5.0)) -> torch.Tensor:
    """Unbiased MMD^2 between samples ``a`` (N, D) and ``b`` (M, D) with a mixture of RBF and IMQ kernels.

    For each ``s`` in ``scales`` with ``c = s * base``: ``exp(-|x-y|^2 / c) + c / (c + |x-y|^2)``.  The IMQ
    kernel's heavy tails keep gradients alive when the two samples are far apart, the RBF sharpens the match
    when they are close (WAE, arXiv:1711.01558).  ``base`` defaults to the mean squared distance between all
    pooled points (detached): the bandwidth then follows the data's scale (for z ~ N(0, I_d) it is ~2d).
    """
    a, b = a.flatten(1), b.flatten(1)
    n, m = a.shape[0], b.shape[0]
    pooled = torch.cat([a, b], dim=0)
    sq = pooled.pow(2).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * pooled @ pooled.T).clamp_min(0.0)
    if base is None:
        base = d2.detach().sum() / max((n + m) * (n + m - 1), 1)
    base_t = torch.as_tensor(base, dtype=a.dtype, device=a.device).clamp_min(1e-12)
    k = torch.zeros_like(d2)
    for s in scales:
        c = s * base_t
        k = k + torch.exp(-d2 / c) + c / (c + d2)
    kaa, kbb, kab = k[:n, :n], k[n:, n:], k[:n, n:]
    term_a = (kaa.sum() - kaa.diagonal().sum()) / max(n * (n - 1), 1)
    term_b = (kbb.sum() - kbb.diagonal().sum()) / max(m * (m - 1), 1)
    return term_a + term_b - 2.0 * kab.mean()


def standardised_mmd(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """:func:`mmd` of per-shower feature rows (N, D) after dividing every column by the real sample's standard
    deviation (detached).

    With one shared bandwidth, a column of large spread hides the others: in (e, log E_sum, log n_hits) the
    incident energy e in [0.1, 1] is a rounding error next to log E_sum's spread, so the MMD barely sees
    whether E_sum follows e, which is how the energy condition went unlearned (response 5.0 -> 0.39 from 10
    to 100 GeV).  Standardised, every column counts alike and the conditional dependence is measured.
    """
    scale = real.detach().std(dim=0, keepdim=True).clamp_min(1e-6)
    return mmd(real / scale, fake / scale)


def sorted_hit_mmd(real: torch.Tensor, fake: torch.Tensor, k: int, *, window: int = 32, log: bool = False,
                   scales: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0)) -> torch.Tensor:
    """MMD between the sorted top cell energies of a batch of real and one of generated showers.

    The ``k * B`` highest cell energies of each batch (``k`` per shower on average) are pooled and sorted
    in decreasing order; both sorted lists are cut into windows of ``window`` consecutive ranks and a 1D
    MMD compares real and generated values window by window, then the windows are averaged.  This is the
    rank-windowed sorted-hit MMD of the BIB-AE post-processor (arXiv:2005.05334, arXiv:2112.09709): it
    matches the hit-energy *spectrum* (where the hits are does not matter), from the hottest core cells
    down to the MIP-like cells, at a cost linear in ``k * B``.  Each window's bandwidths are relative to
    that window's mean real energy (detached; ``scales`` spans 0.1x to 10x it), so every decade of the
    spectrum counts the same, as on the usual log-scale plot, and a generated spectrum that is far off
    still gets a gradient.  ``k`` is clipped to the number of cells; ``log`` compares log(1 + E).
    """
    n = min(real.shape[0], fake.shape[0])
    k_total = min(int(k), real[0].numel()) * n
    w = max(1, min(int(window), k_total))
    k_total = (k_total // w) * w
    r = torch.topk(real[:n].flatten(), k_total, sorted=True).values
    f = torch.topk(fake[:n].flatten(), k_total, sorted=True).values
    if log:
        r, f = torch.log1p(r.clamp_min(0)), torch.log1p(f.clamp_min(0))
    r, f = r.reshape(-1, w, 1), f.reshape(-1, w, 1)  # (windows, w, 1)
    scale = r.detach().abs().mean(dim=(1, 2))
    floor = 1e-4 * r.detach().abs().mean().pow(2) + 1e-12
    base = torch.maximum(scale.pow(2), floor)  # squared bandwidths from (0.1 x)^2 to (10 x the window's energy)^2
    return torch.stack([mmd(rw, fw, base=b, scales=scales) for rw, fw, b in zip(r, f, base, strict=True)]).mean()
