"""TV-L1 optical flow, two implementations of one algorithm: OpenCV's and a batched torch one.

The algorithm is Zach, Pock and Bischof's duality-based TV-L1 (DAGM 2007) in the numerical scheme
of Sánchez, Meinhardt-Llopis and Facciolo (IPOL 2013), which OpenCV's
``cv2.optflow.DualTVL1OpticalFlow`` follows. `tvl1_torch` reproduces OpenCV's CPU code step by
step, so the two agree to interpolation round-off (bench/flow.py measures by how much):

* pyramid: greyscale in 0..255, bilinear downscaling by `scale_step` per level (no pre-smoothing),
  levels below 16 px dropped; the flow starts at 0 on the coarsest level and is upsampled
  bilinearly and divided by `scale_step` for the next finer one;
* per level the dual variables start at 0; per warp I1 and its centred gradient are warped by the
  current flow (bicubic, zero outside the image) and the data term is linearised;
* per iteration: the thresholding step on the linearised residual (v), the primal update
  u = v + theta * div(p), and the dual projection p = (p + tau/theta * grad u) / (1 + tau/theta *
  |grad u|) with forward differences and the matching backward divergence;
* stopping per warp when the squared change of u summed over the image falls to
  epsilon^2 * pixels, or after `outer_iterations` x `inner_iterations`; a 5x5 median filter on u
  before each outer iteration (`median_filtering`).

OpenCV's constant (and the IPOL paper's) defaults are those of `TVL1Params()`; IPOL's zoom factor
is 0.5 where OpenCV's `scale_step` is 0.8. The torch code runs a whole batch of frame pairs (of
one size) at once and stops each pair on its own criterion, on CPU or CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

MIN_LEVEL_SIZE = 16  # OpenCV drops pyramid levels narrower or shorter than this


@dataclass(frozen=True)
class TVL1Params:
    """TV-L1 settings; the defaults are OpenCV's (cv2.optflow.DualTVL1OpticalFlow_create())."""

    tau: float = 0.25               # time step of the dual update
    lambda_: float = 0.15           # weight of the data term (intensities in 0..255)
    theta: float = 0.3              # coupling of u and v
    nscales: int = 5                # pyramid levels
    scale_step: float = 0.8         # downscaling per level (IPOL: 0.5)
    warps: int = 5                  # warps per level
    epsilon: float = 0.01           # stopping threshold (per pixel, on the change of u)
    inner_iterations: int = 30
    outer_iterations: int = 10
    median_filtering: int = 5       # median kernel on u before each outer iteration; <= 1: none


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, H, W) uint8 luma (ITU-R BT.601 weights, rounded, as OpenCV's)."""
    weights = np.array([299, 587, 114], dtype=np.uint32)
    return ((rgb.astype(np.uint32) @ weights + 500) // 1000).astype(np.uint8)


def tvl1_opencv(i0: np.ndarray, i1: np.ndarray, params: TVL1Params) -> np.ndarray:
    """Flow (N, H, W, 2) from grey frames i0 (N, H, W) to i1 with OpenCV's Dual TV-L1, pair by pair."""
    import cv2

    algo = cv2.optflow.DualTVL1OpticalFlow_create()
    algo.setTau(params.tau)
    algo.setLambda(params.lambda_)
    algo.setTheta(params.theta)
    algo.setScalesNumber(params.nscales)
    algo.setScaleStep(params.scale_step)
    algo.setWarpingsNumber(params.warps)
    algo.setEpsilon(params.epsilon)
    algo.setInnerIterations(params.inner_iterations)
    algo.setOuterIterations(params.outer_iterations)
    algo.setMedianFiltering(params.median_filtering)
    out = [algo.calc(np.ascontiguousarray(a), np.ascontiguousarray(b), None) for a, b in zip(i0, i1)]
    return np.stack(out) if out else np.zeros((0, *i0.shape[1:], 2), np.float32)


def _sample(img: torch.Tensor, x: torch.Tensor, y: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
    """img (B, H, W) sampled at pixel coordinates x, y (B, h, w) with grid_sample (align_corners)."""
    height, width = img.shape[-2:]
    grid = torch.stack((x * (2.0 / max(width - 1, 1)) - 1.0, y * (2.0 / max(height - 1, 1)) - 1.0), dim=-1)
    return F.grid_sample(img[:, None], grid, mode=mode, padding_mode=padding, align_corners=True)[:, 0]


def _resize(img: torch.Tensor, height: int, width: int, scale_y: float, scale_x: float) -> torch.Tensor:
    """Bilinear resize as OpenCV's INTER_LINEAR: source = (dst + 0.5) * scale - 0.5, edges replicated."""
    ys = (torch.arange(height, device=img.device, dtype=img.dtype) + 0.5) * scale_y - 0.5
    xs = (torch.arange(width, device=img.device, dtype=img.dtype) + 0.5) * scale_x - 0.5
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    batch = img.shape[0]
    return _sample(img, x.expand(batch, -1, -1), y.expand(batch, -1, -1), "bilinear", "border")


def _centred_gradient(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences / 2; at the borders half the one-sided difference (OpenCV's centeredGradient)."""
    padded = F.pad(img[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    return 0.5 * (padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2]), 0.5 * (padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1])


def _forward_gradient(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences, 0 on the last column / row."""
    ux, uy = torch.zeros_like(u), torch.zeros_like(u)
    torch.sub(u[..., 1:], u[..., :-1], out=ux[..., :-1])
    torch.sub(u[..., 1:, :], u[..., :-1, :], out=uy[..., :-1, :])
    return ux, uy


def _divergence(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Backward-difference divergence, the negative adjoint of `_forward_gradient`."""
    div = p1 + p2
    div[..., 1:] -= p1[..., :-1]
    div[..., 1:, :] -= p2[..., :-1, :]
    return div


def _batcher_pairs(n: int) -> list[tuple[int, int]]:
    """Comparators (i < j) of Batcher's odd-even merge sorting network on n = 2^k wires."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


def _selection_network(count: int, rank: int) -> list[tuple[int, int, bool, bool]]:
    """A min/max network leaving element `rank` (0-based) of `count` inputs on wire `rank`.

    Batcher's network on the next power of two, with the padding wires taken as +inf (their
    comparators resolved statically) and every comparator or output that cannot reach wire `rank`
    removed. Each step is (i, j, need_min, need_max): wire i gets min(i, j), wire j max(i, j).
    """
    size = 1 << (count - 1).bit_length()
    infinite = [w >= count for w in range(size)]
    steps = []
    for i, j in _batcher_pairs(size):
        if infinite[j]:
            continue  # min(x, inf) = x stays on i, inf stays on j
        if infinite[i]:
            steps.append((i, j, True, True))  # a swap with a constant: resolved when building, see below
            infinite[i], infinite[j] = False, True
            continue
        steps.append((i, j, True, True))
    needed = {rank}
    pruned = []
    for i, j, _, _ in reversed(steps):
        need_min, need_max = i in needed, j in needed
        if need_min or need_max:
            pruned.append((i, j, need_min, need_max))
            needed |= {i, j}
    return pruned[::-1]


_MEDIAN_NETWORKS: dict[int, list[tuple[int, int, bool, bool]]] = {}


def _median(u: torch.Tensor, size: int) -> torch.Tensor:
    """size x size median filter with replicated borders (OpenCV's medianBlur on float images).

    A pruned sorting network of elementwise min/max over the shifted images: about 10x faster
    than torch.median over unfolded patches on a CPU, and exact.
    """
    half, count = size // 2, size * size
    height, width = u.shape[-2:]
    padded = F.pad(u[:, None], (half, half, half, half), mode="replicate")[:, 0]
    wires: list[torch.Tensor | None] = [padded[:, dy:dy + height, dx:dx + width]
                                        for dy in range(size) for dx in range(size)]
    wires += [None] * ((1 << (count - 1).bit_length()) - count)  # None: +inf
    if size not in _MEDIAN_NETWORKS:
        _MEDIAN_NETWORKS[size] = _selection_network(count, count // 2)
    for i, j, need_min, need_max in _MEDIAN_NETWORKS[size]:
        a, b = wires[i], wires[j]
        if a is None or b is None:  # one side is +inf: min is the other, max is +inf
            wires[i], wires[j] = (b if a is None else a), None
            continue
        wires[i], wires[j] = (torch.minimum(a, b) if need_min else None), (torch.maximum(a, b) if need_max else None)
    return wires[count // 2]


def _where(active: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """`new` for the pairs still iterating, `old` for those that met the stopping criterion."""
    if bool(active.all()):
        return new
    return torch.where(active[:, None, None], new, old)


def _level_sizes(height: int, width: int, params: TVL1Params) -> list[tuple[int, int]]:
    """Pyramid level sizes, finest first, as OpenCV rounds them; levels under 16 px are dropped."""
    sizes = [(height, width)]
    for _ in range(1, params.nscales):
        h, w = (int(np.rint(s * params.scale_step)) for s in sizes[-1])
        if h < MIN_LEVEL_SIZE or w < MIN_LEVEL_SIZE:
            break
        sizes.append((h, w))
    return sizes


def _one_level(i0: torch.Tensor, i1: torch.Tensor, u1: torch.Tensor, u2: torch.Tensor,
               params: TVL1Params) -> tuple[torch.Tensor, torch.Tensor]:
    """Warps and primal-dual iterations on one pyramid level; returns the refined flow (u1, u2)."""
    batch, height, width = i0.shape
    scaled_epsilon = params.epsilon ** 2 * height * width
    l_t = params.lambda_ * params.theta
    taut = params.tau / params.theta
    i1x, i1y = _centred_gradient(i1)
    p11, p12, p21, p22 = (torch.zeros_like(i0) for _ in range(4))
    ys, xs = torch.meshgrid(torch.arange(height, device=i0.device, dtype=i0.dtype),
                            torch.arange(width, device=i0.device, dtype=i0.dtype), indexing="ij")
    for _ in range(params.warps):
        x, y = xs + u1, ys + u2
        warped = _sample(torch.cat((i1, i1x, i1y)), x.repeat(3, 1, 1), y.repeat(3, 1, 1), "bicubic", "zeros")
        i1w, i1wx, i1wy = warped.split(batch)
        grad = i1wx * i1wx + i1wy * i1wy
        rho_c = i1w - i1wx * u1 - i1wy * u2 - i0
        safe_grad = grad.clamp_min(torch.finfo(grad.dtype).tiny)
        active = torch.ones(batch, dtype=torch.bool, device=i0.device)
        for _ in range(params.outer_iterations):
            if not bool(active.any()):
                break
            if params.median_filtering > 1:
                u1 = _where(active, _median(u1, params.median_filtering), u1)
                u2 = _where(active, _median(u2, params.median_filtering), u2)
            for _ in range(params.inner_iterations):
                if not bool(active.any()):
                    break
                # thresholding step: v = u + clamp(-rho / |grad I1|^2, -l_t, l_t) * grad I1
                step = (rho_c + i1wx * u1 + i1wy * u2).div_(safe_grad).neg_().clamp_(-l_t, l_t)
                # primal update: u = v + theta * div(p); error = squared change of u
                delta1 = (step * i1wx).add_(_divergence(p11, p12), alpha=params.theta)
                delta2 = (step * i1wy).add_(_divergence(p21, p22), alpha=params.theta)
                error = (delta1.square() + delta2.square()).sum(dim=(1, 2))
                u1, u2 = _where(active, u1 + delta1, u1), _where(active, u2 + delta2, u2)
                # dual projection: p = (p + taut * grad u) / (1 + taut * |grad u|)
                u1x, u1y = _forward_gradient(u1)
                u2x, u2y = _forward_gradient(u2)
                norm1 = torch.hypot(u1x, u1y).mul_(taut).add_(1.0)
                norm2 = torch.hypot(u2x, u2y).mul_(taut).add_(1.0)
                p11 = _where(active, u1x.mul_(taut).add_(p11).div_(norm1), p11)
                p12 = _where(active, u1y.mul_(taut).add_(p12).div_(norm1), p12)
                p21 = _where(active, u2x.mul_(taut).add_(p21).div_(norm2), p21)
                p22 = _where(active, u2y.mul_(taut).add_(p22).div_(norm2), p22)
                active = active & (error > scaled_epsilon)
    return u1, u2


@torch.no_grad()
def tvl1_torch(i0: torch.Tensor | np.ndarray, i1: torch.Tensor | np.ndarray, params: TVL1Params,
               device: str | torch.device = "cpu") -> np.ndarray:
    """Flow (N, H, W, 2) from grey frames i0 (N, H, W, values 0..255) to i1, all pairs in one batch.

    Same algorithm and defaults as `tvl1_opencv`; runs on `device` (cpu or cuda) in float32.
    """
    a = torch.as_tensor(np.asarray(i0) if not isinstance(i0, torch.Tensor) else i0).to(device, torch.float32)
    b = torch.as_tensor(np.asarray(i1) if not isinstance(i1, torch.Tensor) else i1).to(device, torch.float32)
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(f"tvl1_torch: expected two (N, H, W) batches of one shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if a.shape[0] == 0:
        return np.zeros((0, *a.shape[1:], 2), np.float32)
    sizes = _level_sizes(a.shape[1], a.shape[2], params)
    pyramid = [(a, b)]
    for h, w in sizes[1:]:
        scale = 1.0 / params.scale_step
        pyramid.append((_resize(pyramid[-1][0], h, w, scale, scale), _resize(pyramid[-1][1], h, w, scale, scale)))
    u1 = torch.zeros_like(pyramid[-1][0])
    u2 = torch.zeros_like(u1)
    for level in range(len(sizes) - 1, -1, -1):
        u1, u2 = _one_level(*pyramid[level], u1, u2, params)
        if level == 0:
            break
        (h, w), (h0, w0) = sizes[level - 1], sizes[level]
        u1 = _resize(u1, h, w, h0 / h, w0 / w) / params.scale_step
        u2 = _resize(u2, h, w, h0 / h, w0 / w) / params.scale_step
    return torch.stack((u1, u2), dim=-1).cpu().numpy()
