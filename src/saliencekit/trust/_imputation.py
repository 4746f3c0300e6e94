"""Noisy linear imputation (Rong et al. 2022, ROAD), solved on the input's device.

Every removed pixel ``i`` is set to the weighted mean of its in-image 8-neighbours ``j`` (direct neighbours
weight 1/6, diagonal ones 1/12), all removed pixels jointly:

    s_i x_i - sum_{j removed} w_ij x_j = sum_{j kept} w_ij v_j,     s_i = sum_{j in image} w_ij,

which is Rong et al.'s sparse system (their ``setup_sparse_system``) with the signs flipped. The matrix is
symmetric and irreducibly diagonally dominant with a positive diagonal, hence positive definite whenever at
least one pixel is kept, so it is solved by conjugate gradients, matrix-free (the stencil is eight shifted
adds), preconditioned by an aggregation-multigrid V-cycle; everything runs batched over images and channels
on the input's device, CPU or GPU. Then Gaussian noise of std ``noise`` is added to the imputed pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from saliencekit.errors import InputError, UnknownNameError
from saliencekit.trust._ops import make_generator, rand

DIRECT_WEIGHT = 1.0 / 6.0
DIAGONAL_WEIGHT = 1.0 / 12.0
_WEIGHTS = [DIAGONAL_WEIGHT, DIRECT_WEIGHT, DIAGONAL_WEIGHT, DIRECT_WEIGHT, 0.0, DIRECT_WEIGHT, DIAGONAL_WEIGHT,
            DIRECT_WEIGHT, DIAGONAL_WEIGHT]  # in the order of _OFFSETS


def _apply(x: Tensor) -> Tensor:
    """Neighbour-weighted sums ``sum_j w_ij x_j`` of (B, H, W) planes, zero outside the image.

    Eight shifted adds rather than a 3x3 convolution: as fast on the GPU and much faster for float64 on the CPU.
    """
    p = F.pad(x, (1, 1, 1, 1))
    direct = p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:]
    diagonal = p[:, :-2, :-2] + p[:, :-2, 2:] + p[:, 2:, :-2] + p[:, 2:, 2:]
    return DIRECT_WEIGHT * direct + DIAGONAL_WEIGHT * diagonal


_CHECK_EVERY = 8
_STALL_CHECKS = 4
_COARSEST = 6  # stop coarsening below this side
_SMOOTH = 1  # damped Jacobi sweeps before and after each coarse correction
_OMEGA = 2.0 / 3.0
_COARSE_SWEEPS = 20

# the 9 stencil offsets (dy, dx); index 4 is the centre
_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _shifted(x: Tensor) -> list[Tensor]:
    """``x[i + k]`` for every offset ``k`` in _OFFSETS, zero outside the image (x: (B, H, W))."""
    h, w = x.shape[-2:]
    p = F.pad(x, (1, 1, 1, 1))
    return [p[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in _OFFSETS]


def _stencil_apply(coef: Tensor, x: Tensor) -> Tensor:
    """``(A x)_i = sum_k coef[:, k, i] * x[i + k]`` for a 9-point operator stored as coefficients (B, 9, H, W)."""
    out = None
    for k, xs in enumerate(_shifted(x)):
        term = coef[:, k] * xs
        out = term if out is None else out + term
    return out


class _Multigrid:
    """A symmetric V-cycle approximating ``A^-1`` on the removed pixels; the preconditioner of the CG solve.

    Aggregation multigrid: 2x2 blocks of removed pixels form one coarse unknown (piecewise-constant
    prolongation P, restriction P^T), coarse operators by Galerkin products ``P^T A P`` (again 9-point stencils,
    built with strided slices), damped Jacobi smoothing with as many sweeps after as before. The V-cycle is
    therefore a symmetric positive definite linear operator, as conjugate gradients require. With it the number
    of CG iterations barely grows with the size of the holes, where plain CG needs about one per pixel of hole
    width.
    """

    def __init__(self, fine_op, fine_inv_diag: Tensor, fine_coef: Tensor, u: Tensor):
        self.levels: list[tuple] = [(fine_op, fine_inv_diag, u)]
        coef = fine_coef
        while min(coef.shape[-2:]) >= 2 * _COARSEST:
            coef, u = self._coarsen(coef, u)
            diag = coef[:, 4]
            inv = torch.where(diag > 0, 1 / torch.where(diag > 0, diag, torch.ones_like(diag)), torch.zeros_like(diag))
            self.levels.append((lambda x, c=coef: _stencil_apply(c, x), inv, u))

    @staticmethod
    def _coarsen(coef: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        b, _, h, w = coef.shape
        coef = F.pad(coef, (0, w % 2, 0, h % 2))
        u = F.pad(u, (0, w % 2, 0, h % 2))
        hc, wc = coef.shape[-2] // 2, coef.shape[-1] // 2
        coarse = coef.new_zeros(b, 9, hc, wc)
        for a in (0, 1):
            for c in (0, 1):
                sub = coef[:, :, a::2, c::2]
                for k, (dy, dx) in enumerate(_OFFSETS):
                    coarse[:, _OFFSETS.index(((a + dy) // 2, (c + dx) // 2))] += sub[:, k]
        return coarse, u.reshape(b, hc, 2, wc, 2).amax(dim=(2, 4))

    @staticmethod
    def _restrict(r: Tensor) -> Tensor:
        b, h, w = r.shape
        r = F.pad(r, (0, w % 2, 0, h % 2))
        return r.reshape(b, r.shape[1] // 2, 2, r.shape[2] // 2, 2).sum(dim=(2, 4))

    def __call__(self, r: Tensor, level: int = 0) -> Tensor:
        op, inv, u = self.levels[level]
        if level == len(self.levels) - 1:
            sweeps = _COARSE_SWEEPS if level > 0 else _SMOOTH
            e = _OMEGA * inv * r
            for _ in range(sweeps - 1):
                e = e + _OMEGA * inv * (r - op(e))
            return e
        e = _OMEGA * inv * r
        for _ in range(_SMOOTH - 1):
            e = e + _OMEGA * inv * (r - op(e))
        ec = self(self._restrict(r - op(e)), level + 1)
        h, w = r.shape[-2:]
        e = e + u * ec.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[:, :h, :w]
        for _ in range(_SMOOTH):
            e = e + _OMEGA * inv * (r - op(e))
        return e


def solve_linear_imputation(values: Tensor, removed: Tensor, tol: float | None = None,
                            max_iter: int | None = None, preconditioner: str = "multigrid") -> tuple[Tensor, Tensor]:
    """Solve the linear imputation system for a batch of planes (no noise).

    Args:
        values: (B, H, W) planes; values at removed pixels are ignored.
        removed: (B, H, W) bool, True where the pixel is to be imputed.
        tol: stop when ``||residual|| <= tol * ||rhs||`` for every plane; default 1e-5 in float32 (errors of
            about 1e-3 of the value range at worst, far below ROAD's noise), 1e-12 in float64.
        max_iter: iteration cap; default ``4 * (H + W) + 100``.
        preconditioner: ``"multigrid"`` (a V-cycle, see :class:`_Multigrid`) or ``"jacobi"`` (the diagonal;
            needs about one iteration per pixel of hole width).

    Returns:
        (imputed planes, kept values unchanged; per-plane relative residual (B,)). Planes in which every pixel
        is removed have no solution and are filled with 0.
    """
    if values.shape != removed.shape or values.dim() != 3:
        raise InputError(f"imputation needs values and removed of equal shape (B, H, W), got {tuple(values.shape)} "
                         f"and {tuple(removed.shape)}")
    dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    v = values.to(dtype)
    u = removed.to(device=v.device, dtype=torch.bool)
    uf = u.to(dtype)
    h, w = v.shape[-2:]
    if tol is None:
        tol = 1e-12 if dtype == torch.float64 else 1e-5
    if max_iter is None:
        max_iter = 4 * (h + w) + 100
    s = _apply(torch.ones(1, h, w, dtype=dtype, device=v.device))  # in-image neighbour weight sum
    kept = v * (1 - uf)
    rhs = uf * _apply(kept)

    def op(x: Tensor) -> Tensor:
        return uf * (s * x - _apply(x))  # x is zero outside the removed set

    inv_s = uf / s
    if preconditioner == "multigrid":
        coef = torch.stack([-w_k * uf * us for w_k, us in zip(_WEIGHTS, _shifted(uf))], dim=1)
        coef[:, 4] = s * uf
        precond = _Multigrid(op, inv_s, coef, uf)
        del coef
    elif preconditioner == "jacobi":
        def precond(r: Tensor) -> Tensor:
            return inv_s * r
    else:
        raise UnknownNameError("preconditioner", preconditioner, ["multigrid", "jacobi"])

    n_kept = (1 - uf).sum(dim=(1, 2))
    solvable = n_kept > 0
    mean_kept = kept.sum(dim=(1, 2)) / n_kept.clamp(min=1)
    x = uf * mean_kept.view(-1, 1, 1)
    x = torch.where(solvable.view(-1, 1, 1), x, torch.zeros_like(x))
    r = rhs - op(x)
    r = torch.where(solvable.view(-1, 1, 1), r, torch.zeros_like(r))
    bnorm = rhs.flatten(1).norm(dim=1)
    thresh = tol * torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))
    z = precond(r)
    p = z.clone()
    rz = (r * z).sum(dim=(1, 2))
    rnorm = r.flatten(1).norm(dim=1)
    active = rnorm > thresh
    best = rnorm.clone()
    stalled = torch.zeros_like(rnorm, dtype=torch.long)
    for it in range(max_iter):
        if it % _CHECK_EVERY == 0:
            if it > 0:
                # in float32 the residual stops falling at rounding level: stop a plane that has not improved
                # by 1% over the last _STALL_CHECKS checks (float64 normally reaches tol first)
                rnorm = r.flatten(1).norm(dim=1)
                improved = rnorm < 0.99 * best
                best = torch.where(improved, rnorm, best)
                stalled = torch.where(improved, torch.zeros_like(stalled), stalled + 1)
                active = active & (stalled < _STALL_CHECKS)
            if not bool(active.any()):
                break
        ap = op(p)
        pap = (p * ap).sum(dim=(1, 2))
        ok = active & (pap > 0)
        alpha = torch.where(ok, rz / torch.where(ok, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        x = x + alpha.view(-1, 1, 1) * p
        r = r - alpha.view(-1, 1, 1) * ap
        z = precond(r)
        rz_new = (r * z).sum(dim=(1, 2))
        beta = torch.where(ok & (rz > 0), rz_new / torch.where(rz > 0, rz, torch.ones_like(rz)), torch.zeros_like(rz))
        p = z + beta.view(-1, 1, 1) * p
        rz = rz_new
        active = ok & (r.flatten(1).norm(dim=1) > thresh)
    res = (rhs - op(x)).flatten(1).norm(dim=1) / torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))
    out = torch.where(u, x, v)
    return out, torch.where(solvable, res, torch.zeros_like(res))


def noisy_linear_impute(images: Tensor, removed: Tensor, noise: float = 0.01,
                        generator: torch.Generator | int | None = None, tol: float | None = None,
                        max_iter: int | None = None) -> Tensor:
    """Replace the removed pixels of every image by noisy linear imputation (Rong et al. 2022).

    Args:
        images: (N, C, H, W).
        removed: (N, H, W) bool, the same pixels are removed in every channel.
        noise: std of the Gaussian noise added to the imputed pixels, in input units (Rong et al.: 0.01).
        generator: torch.Generator or seed for the noise (None: seed 0); drawn on the generator's device.
        tol: see :func:`solve_linear_imputation`.
        max_iter: see :func:`solve_linear_imputation`.

    Returns:
        (N, C, H, W) in the images' dtype (float32 for non-float input), on their device.
    """
    if images.dim() != 4 or removed.shape != (images.shape[0], *images.shape[2:]):
        raise InputError(f"noisy_linear_impute needs images (N, C, H, W) and removed (N, H, W), got "
                         f"{tuple(images.shape)} and {tuple(removed.shape)}")
    n, c, h, w = images.shape
    dtype = images.dtype if images.is_floating_point() else torch.float32
    u = removed.to(images.device, torch.bool).unsqueeze(1).expand(n, c, h, w)
    out, _ = solve_linear_imputation(images.reshape(n * c, h, w), u.reshape(n * c, h, w), tol, max_iter)
    out = out.reshape(n, c, h, w)
    if noise > 0:
        eps = rand((n, c, h, w), make_generator(generator), images.device, out.dtype, normal=True)
        out = torch.where(u, out + noise * eps, out)
    return out.to(dtype)
