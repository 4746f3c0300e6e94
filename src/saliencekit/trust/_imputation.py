"""Noisy linear imputation (Rong et al. 2022, ROAD), solved on the input's device.

Every removed pixel ``i`` is set to the weighted mean of its in-image 8-neighbours ``j`` (direct neighbours
weight 1/6, diagonal ones 1/12), all removed pixels jointly:

    s_i x_i - sum_{j removed} w_ij x_j = sum_{j kept} w_ij v_j,     s_i = sum_{j in image} w_ij,

which is Rong et al.'s sparse system (their ``setup_sparse_system``) with the signs flipped. The matrix is
symmetric and irreducibly diagonally dominant with a positive diagonal, hence positive definite whenever at
least one pixel is kept, so it is solved by Jacobi-preconditioned conjugate gradients, matrix-free: the
stencil is applied with a 3x3 convolution, which runs batched over images and channels on the CPU or the GPU.
Then Gaussian noise of std ``noise`` is added to the imputed pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from saliencekit.errors import InputError
from saliencekit.trust._ops import make_generator, rand

DIRECT_WEIGHT = 1.0 / 6.0
DIAGONAL_WEIGHT = 1.0 / 12.0


def stencil(dtype: torch.dtype, device: torch.device) -> Tensor:
    """The 3x3 neighbour weights (centre 0) as a conv2d kernel (1, 1, 3, 3)."""
    d, c = DIRECT_WEIGHT, DIAGONAL_WEIGHT
    return torch.tensor([[c, d, c], [d, 0.0, d], [c, d, c]], dtype=dtype, device=device).view(1, 1, 3, 3)


def _apply(x: Tensor, kernel: Tensor) -> Tensor:
    """Neighbour-weighted sums of (B, H, W) planes, zero outside the image."""
    return F.conv2d(x.unsqueeze(1), kernel, padding=1).squeeze(1)


_CHECK_EVERY = 8
_STALL_CHECKS = 8
_COARSEST = 16


def _initial_guess(v: Tensor, u: Tensor, dtype: torch.dtype) -> Tensor:
    """Starting point for CG: the solution of the same problem at half resolution, upsampled (cascadic).

    On the coarsest level (side < 16) the mean of the kept pixels. Coarse pixels are removed when all their
    fine pixels are; their value is the mean of the kept fine pixels. Converges to the same solution, only
    faster: the smooth part of the error, which CG removes slowest, is mostly gone from the start.
    """
    h, w = v.shape[-2:]
    kf = (~u).to(dtype)
    if min(h, w) < 2 * _COARSEST:
        n_kept = kf.sum(dim=(1, 2))
        mean = (v * kf).sum(dim=(1, 2)) / n_kept.clamp(min=1)
        return mean.view(-1, 1, 1).expand_as(v)
    vs = F.avg_pool2d((v * kf).unsqueeze(1), 2, ceil_mode=True).squeeze(1)
    ks = F.avg_pool2d(kf.unsqueeze(1), 2, ceil_mode=True).squeeze(1)
    coarse_u = ks <= 0
    coarse_v = vs / torch.where(coarse_u, torch.ones_like(ks), ks)
    coarse, _ = solve_linear_imputation(coarse_v, coarse_u, tol=1e-3)
    return F.interpolate(coarse.unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False).squeeze(1)


def solve_linear_imputation(values: Tensor, removed: Tensor, tol: float | None = None,
                            max_iter: int | None = None) -> tuple[Tensor, Tensor]:
    """Solve the linear imputation system for a batch of planes (no noise).

    Args:
        values: (B, H, W) planes; values at removed pixels are ignored.
        removed: (B, H, W) bool, True where the pixel is to be imputed.
        tol: stop when ``||residual|| <= tol * ||rhs||`` for every plane; default 1e-6 in float32, 1e-12 in
            float64.
        max_iter: iteration cap; default ``4 * (H + W) + 100``.

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
        tol = 1e-12 if dtype == torch.float64 else 1e-6
    if max_iter is None:
        max_iter = 4 * (h + w) + 100
    kernel = stencil(dtype, v.device)
    s = _apply(torch.ones(1, h, w, dtype=dtype, device=v.device), kernel)  # in-image neighbour weight sum
    kept = v * (1 - uf)
    rhs = uf * _apply(kept, kernel)

    def op(x: Tensor) -> Tensor:
        return uf * (s * x - _apply(x, kernel))  # x is zero outside the removed set

    n_kept = (1 - uf).sum(dim=(1, 2))
    solvable = n_kept > 0
    x = uf * _initial_guess(v, u, dtype)
    x = torch.where(solvable.view(-1, 1, 1), x, torch.zeros_like(x))
    r = rhs - op(x)
    r = torch.where(solvable.view(-1, 1, 1), r, torch.zeros_like(r))
    bnorm = rhs.flatten(1).norm(dim=1)
    thresh = tol * torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))
    z = r / s
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
                # by 1% over the last _STALL_CHECKS checks
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
        z = r / s
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
