"""Drawing machinery of the synthetic chest X-ray generator (private).

A patient is a small set of random numbers (:class:`Patient`, drawn by :func:`sample_patient`);
:func:`render` turns it into a radiograph and its masks. Anatomy is described in *patient
coordinates* ``(p, q)``: ``p`` runs from the patient's right (negative, the image's left) to the
patient's left (positive, the image's right), ``q`` from the neck (negative) down to the abdomen
(positive); the lungs span roughly ``q`` in [-0.75, 0.55]. Every structure adds to (bone, soft
tissue, heart, fluid) or removes from (air in the lungs, trachea, stomach bubble) a projected
density map; the image is ``1 - exp(-gain * density)`` with noise, blur and an exposure window.
Everything is vectorised numpy on the pixel grid; one 512x512 image takes a few tens of ms.

Sides are indexed 0 = the patient's right (image left) and 1 = the patient's left (image right).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image
from scipy import ndimage

SIDE_NAMES = ("right", "left")  # the patient's sides; "left" is drawn on the image's right


@dataclass(frozen=True)
class Patient:
    """The random numbers behind one synthetic radiograph (all lengths in patient units)."""

    size: int
    # placement of the patient in the image
    scale: float
    aspect: float
    tx: float
    ty: float
    angle: float
    # body outline and soft tissue
    neck: float
    shoulder_w: float
    waist_w: float
    shoulder_q: float
    tissue: float
    # lungs, per side (right, left)
    q_top: float
    q_cp: tuple[float, float]
    x_lat: tuple[float, float]
    x_med: tuple[float, float]
    dome_h: tuple[float, float]
    dome_c: float
    air: float
    # heart and mediastinum
    heart: tuple[float, float, float, float, float]  # cx, cy, rx, ry, angle
    med_w: float
    # bones
    rib_phase: float
    rib_spacing: float
    rib_width: float
    rib_density: float
    clav_q: float
    clav_density: float
    # confounders present in both classes
    breast: float
    bubble: float
    # exposure
    gain: float
    lo: float
    hi: float
    gamma: float
    noise: float
    blur: float
    texture_seed: int
    # the lesion, per side (0 = no fluid on that side): fluid volume (the height of the fluid level above
    # the costophrenic angle), meniscus height, and opacity (the share of the lung's air the fluid replaces
    # where it is full thickness: a small effusion is a thin layer and only partly opaque)
    fluid: tuple[float, float] = (0.0, 0.0)
    meniscus: tuple[float, float] = (0.0, 0.0)
    opacity: tuple[float, float] = (0.0, 0.0)
    # the planted shortcut marker: present, and its top-left corner as a fraction of the size
    marker: bool = False
    marker_xy: tuple[float, float] = field(default=(0.0, 0.0))

    def without_fluid(self) -> Patient:
        """The same patient with no effusion (for tests: what did the fluid change?)."""
        return replace(self, fluid=(0.0, 0.0), meniscus=(0.0, 0.0), opacity=(0.0, 0.0))


@dataclass
class Rendering:
    """A rendered radiograph (uint8, HxW) and its boolean masks."""

    image: np.ndarray
    lesion: np.ndarray
    lung: np.ndarray
    shortcut: np.ndarray


# fluid volumes (uniform): from a sliver in the costophrenic angle to about a third of the lung
VOLUME_RANGE = (0.015, 0.465)
# opacity of the fluid: rises linearly with the volume from OPACITY_MIN (a thin layer, barely visible) to
# full at OPACITY_FULL_VOLUME (one effusion side in seven is partly opaque), with +-20% jitter between
# patients. Stronger settings (0.15 -> full at 0.2, or 0.25 -> full at 0.1) delayed the lesson CNN's escape
# from its loss plateau past the 10th epoch at seed 42 (test accuracy 0.72 / 0.70); see bench/README.md.
OPACITY_MIN = 0.3
OPACITY_FULL_VOLUME = 0.075


def fluid_opacity(volume: float, jitter: float) -> float:
    """The opacity of a fluid layer of ``volume``; ``jitter`` in [0, 1] spreads it by +-20%."""
    ramp = OPACITY_MIN + (1.0 - OPACITY_MIN) * (volume - VOLUME_RANGE[0]) / (OPACITY_FULL_VOLUME - VOLUME_RANGE[0])
    return float(np.clip(ramp * (0.8 + 0.4 * jitter), OPACITY_MIN * 0.8, 1.0))


def sample_patient(rng: np.random.Generator, size: int, effusion: bool, marker: bool = False) -> Patient:
    """Draw a random patient (and, when ``effusion``, fluid at one or both lung bases)."""
    u = rng.uniform
    q_cp_left = u(0.48, 0.58)
    fluid = meniscus = (0.0, 0.0)
    sides: tuple[int, ...] = ()
    if effusion:
        which = rng.choice(3, p=[0.4, 0.4, 0.2])  # right, left, both
        sides = (0, 1) if which == 2 else (int(which),)
        vols = [0.0, 0.0]
        men = [0.0, 0.0]
        for s in sides:
            vols[s] = VOLUME_RANGE[0] + (VOLUME_RANGE[1] - VOLUME_RANGE[0]) * u()
            men[s] = 0.06 + 0.45 * vols[s] + u(0.0, 0.05)
        fluid = (vols[0], vols[1])
        meniscus = (men[0], men[1])
    pt = Patient(
        size=size,
        scale=u(0.84, 1.0),
        aspect=u(0.92, 1.08),
        tx=u(-0.05, 0.05),
        ty=u(-0.02, 0.08),
        angle=np.deg2rad(u(-5.0, 5.0)),
        neck=u(0.2, 0.27),
        shoulder_w=u(0.95, 1.1),
        waist_w=u(0.82, 0.98),
        shoulder_q=u(-0.92, -0.8),
        tissue=u(0.9, 1.1),
        q_top=u(-0.8, -0.7),
        q_cp=(q_cp_left - u(0.0, 0.07), q_cp_left),
        x_lat=(u(0.7, 0.78), u(0.7, 0.78)),
        x_med=(u(0.09, 0.12), u(0.07, 0.1)),
        dome_h=(u(0.13, 0.22), u(0.12, 0.2)),
        dome_c=u(0.28, 0.36),
        air=u(0.6, 0.72),
        heart=(u(0.08, 0.13), u(0.25, 0.3), u(0.31, 0.37), u(0.22, 0.26), np.deg2rad(u(20.0, 35.0))),
        med_w=u(0.09, 0.12),
        rib_phase=u(0.0, 1.0),
        rib_spacing=u(0.1, 0.125),
        rib_width=u(0.32, 0.42),
        rib_density=u(0.14, 0.22),
        clav_q=u(-0.62, -0.54),
        clav_density=u(0.22, 0.32),
        breast=u(0.05, 0.13) if u() < 0.4 else 0.0,
        bubble=u(0.15, 0.3) if u() < 0.6 else 0.0,
        gain=u(0.8, 1.1),
        lo=u(0.02, 0.1),
        hi=u(0.85, 0.97),
        gamma=u(0.8, 1.25),
        noise=u(0.012, 0.03),
        blur=u(0.8, 1.5),
        texture_seed=int(rng.integers(2**31)),
        fluid=fluid,
        meniscus=meniscus,
        marker=marker,
        marker_xy=(u(0.86, 0.9), u(0.03, 0.07)),
    )
    # drawn last, so that the rest of the patient does not depend on how the opacity is sampled
    opacity = [0.0, 0.0]
    for s in sides:
        opacity[s] = fluid_opacity(fluid[s], u())
    return replace(pt, opacity=(opacity[0], opacity[1]))


def _ramp(m: np.ndarray, eps: float) -> np.ndarray:
    """0 below -eps/2, 1 above eps/2, linear in between (a soft edge at m = 0)."""
    return np.clip(m * (1.0 / eps) + 0.5, 0.0, 1.0)


def _bump(d: np.ndarray) -> np.ndarray:
    """Projected thickness of a round rod/ball: sqrt(1 - d^2) inside |d| < 1, else 0."""
    return np.sqrt(np.clip(1.0 - d * d, 0.0, 1.0))


def _noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Smooth random field of roughly unit std with features ``n / cells`` pixels across."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((n, n), Image.Resampling.BICUBIC), dtype=np.float32)


def _resize(a: np.ndarray, n: int) -> np.ndarray:
    """Bilinear resize of a float32 square array to ``n`` x ``n``."""
    if a.shape[0] == n:
        return a
    return np.asarray(Image.fromarray(a, mode="F").resize((n, n), Image.Resampling.BILINEAR), dtype=np.float32)


def _grid(pt: Patient, n: int) -> tuple[np.ndarray, np.ndarray]:
    t = (np.arange(n, dtype=np.float32) + 0.5) * (2.0 / n) - 1.0
    du = t[None, :] - np.float32(pt.tx)
    dv = t[:, None] - np.float32(pt.ty)
    c, s = np.float32(np.cos(pt.angle)), np.float32(np.sin(pt.angle))
    p = (c * du + s * dv) * np.float32(1.0 / pt.scale)
    q = (c * dv - s * du) * np.float32(1.0 / (pt.scale * pt.aspect))
    return p, q


def _side(left: np.ndarray, pair: tuple[float, float]) -> np.ndarray:
    return np.where(left, np.float32(pair[1]), np.float32(pair[0]))


def render(pt: Patient) -> Rendering:
    """Draw the radiograph of ``pt`` and its lesion, lung and shortcut masks."""
    n = pt.size
    w = n // 2 if n >= 256 else n  # the smooth anatomy is drawn at half resolution, then upsampled
    trng = np.random.default_rng(pt.texture_seed)
    p, q = _grid(pt, w)
    x = np.abs(p)
    left = p > 0

    # --- body outline and soft tissue -------------------------------------------------------
    sh = np.clip((q - (pt.shoulder_q - 0.22)) / 0.22, 0.0, 1.0)
    sh = sh * sh * (3.0 - 2.0 * sh)
    width = (
        pt.neck
        + (pt.shoulder_w - pt.neck) * sh
        + (pt.waist_w - pt.shoulder_w) * np.clip((q - pt.shoulder_q) / 1.8, 0.0, 1.0)
    )
    body = _ramp(width - x, 0.03)
    dens = pt.tissue * body * (0.45 + 0.55 * _bump(x / width))
    # arms beside the chest
    arm = _ramp(np.minimum(x - width + 0.01, width + 0.32 - x), 0.05) * _ramp(q - pt.shoulder_q, 0.15)
    dens += 0.45 * pt.tissue * arm

    # --- lungs ------------------------------------------------------------------------------
    qcp = _side(left, pt.q_cp)
    xl = _side(left, pt.x_lat)
    xm = _side(left, pt.x_med)
    hd = _side(left, pt.dome_h)
    x_apex = np.float32(0.26)
    e = np.clip((qcp - q) / (qcp - pt.q_top), 0.0, 1.0)
    m = (x_apex + (xl - x_apex) * np.sqrt(1.0 - e * e)) - x  # lateral chest wall
    m = np.minimum(m, q - (pt.q_top + 2.0 * (x - 0.3) ** 2))  # rounded apex
    sd = (x - pt.dome_c) / (xl - pt.dome_c)
    dome = qcp - hd * (1.0 - sd * sd)
    m = np.minimum(m, dome - q)  # diaphragm dome
    m = np.minimum(m, x - xm)  # mediastinum
    hcx, hcy, hrx, hry, ha = pt.heart
    ca, sa = np.cos(ha), np.sin(ha)
    hp, hq = p - hcx, q - hcy
    r2 = ((ca * hp + sa * hq) / hrx) ** 2 + ((ca * hq - sa * hp) / hry) ** 2
    m = np.minimum(m, (np.sqrt(r2) - 1.0) * 0.25)  # heart
    knob = ((p - 0.09) ** 2 + (q + 0.36) ** 2) * (1.0 / 0.055**2)
    m = np.minimum(m, np.where(left, (np.sqrt(knob) - 1.0) * 0.055, np.float32(1.0)))  # aortic knob
    lung = _ramp(m, 0.012)
    depth = np.sqrt(np.clip(m * (1.0 / 0.12), 0.0, 1.0))
    vert = np.clip((q - pt.q_top) / (qcp - pt.q_top), 0.0, 1.0)
    air = pt.air * lung * (0.45 + 0.55 * depth) * (0.8 + 0.2 * vert)

    # --- the effusion: fluid replaces air at the lung base below a meniscus -----------------
    weight = None
    if max(pt.fluid) > 0:
        vol = _side(left, pt.fluid)
        men = _side(left, pt.meniscus)
        t = np.clip((x - xm) / (xl - xm), 0.0, 1.0)
        level = qcp - vol - men * t**1.8  # concave upper edge, rising along the lateral chest wall
        fl = np.clip((q - level) * (1.0 / 0.07) + 0.3, 0.0, 1.0) ** 1.5 * (vol > 0)  # hazy upper edge
        weight = lung * fl  # where the fluid lies (the lesion mask), whatever its opacity
        opaque = fl * _side(left, pt.opacity)
        air = air * (1.0 - opaque)
        dens += 0.12 * lung * opaque  # the fluid is a little denser than the soft tissue it replaces air with
    dens -= air

    # --- heart, mediastinum, spine, trachea ------------------------------------------------
    dens += 0.1 * _bump(np.sqrt(r2)) ** 0.5 * _ramp(dome - q + 0.03, 0.06)  # the heart sits on the diaphragm
    upper = _ramp(q - pt.q_top + 0.05, 0.15) * _ramp(qcp - 0.1 - q, 0.1)
    dens += 0.3 * _ramp(pt.med_w - np.abs(p - 0.01), 0.04) * upper
    vert_seg = 0.8 + 0.2 * np.cos((q + pt.rib_phase) * (2 * np.pi / 0.095))
    dens += 0.1 * _bump(p * (1.0 / 0.06)) * vert_seg * body
    dens -= 0.15 * _ramp(0.025 - np.abs(p + 0.004), 0.012) * _ramp(-0.3 - q, 0.06)
    hila = np.exp(-((x - 0.17) ** 2) * (1 / 0.004) - (q + 0.05) ** 2 * (1 / 0.012))
    dens += 0.12 * hila

    # --- ribs (posterior arcs and faint anterior segments) and clavicles -------------------
    gate = _ramp(x - 0.08, 0.04) * _ramp(xl + 0.06 - x, 0.06) * _ramp(q - pt.q_top + 0.08, 0.06)
    gate *= _ramp(qcp + 0.2 - q, 0.15) * (0.35 + 0.65 * lung)
    qq = q - 1.3 * (x - 0.3) ** 2 - pt.rib_phase * pt.rib_spacing
    psi = qq * (1.0 / pt.rib_spacing) * (1.0 - 0.12 * qq)  # ribs spread out lower down
    psi += 0.1 * _noise(trng, w, 5)  # no two ribs alike
    f = psi - np.floor(psi)
    half = pt.rib_width / 2
    rib = _bump((f - half) * (1.0 / half))
    cortex = np.clip(np.abs(f - half) * (1.0 / half), 0.0, 1.0) ** 4 * (rib > 0)
    dens += pt.rib_density * (0.75 * rib + 0.4 * cortex) * gate
    psi_a = (q + 0.5 * x - pt.rib_phase) * (1.0 / (1.35 * pt.rib_spacing))
    fa = psi_a - np.floor(psi_a)
    dens += 0.3 * pt.rib_density * _bump((fa - 0.2) * (1.0 / 0.2)) * gate * _ramp(x - 0.3, 0.1)
    cq = pt.clav_q - 0.2 * x + 0.3 * (x - 0.3) ** 2 + 0.025 * np.sin(x * (2 * np.pi / 0.6))
    clav = _bump((q - cq) * (1.0 / (0.032 - 0.012 * x))) * _ramp(x - 0.05, 0.03) * _ramp(0.64 - x, 0.06)
    dens += pt.clav_density * clav

    # --- confounders: breast shadows, stomach bubble ---------------------------------------
    if pt.breast > 0:
        br = ((x - 0.48) * (1 / 0.32)) ** 2 + ((q - qcp + 0.1) * (1 / 0.2)) ** 2
        dens += pt.breast * _ramp(0.8 - br, 0.6) * np.clip((q - qcp + 0.32) * (1 / 0.3), 0.0, 1.0) * body
    if pt.bubble > 0:
        bq = pt.q_cp[1] + 0.06
        bb = ((p - 0.3) * (1 / 0.09)) ** 2 + ((q - bq) * (1 / 0.05)) ** 2
        dens -= pt.bubble * _ramp(1.0 - bb, 0.3)

    # --- lung markings: vessels radiating from the hila, plus mottle ------------------------
    ang = np.arctan2(q + 0.05, x - 0.15)
    line = trng.standard_normal(256).astype(np.float32)
    idx = ((ang + np.pi) * (256 / (2 * np.pi))).astype(np.int32) % 256
    radial = np.exp(-np.hypot(x - 0.15, q + 0.05) * 2.5)
    mottle = _noise(trng, w, 40)
    dens += 0.08 * (lung * radial) * np.clip(line[idx] + 0.6 * mottle, -1.0, 3.0)
    dens += 0.04 * _noise(trng, w, 12) * body

    # --- exposure and window, then (at full resolution) noise and blur ---------------------
    img = 1.0 - np.exp(-pt.gain * np.maximum(dens, 0.0))
    img = np.clip((img - pt.lo) * (1.0 / (pt.hi - pt.lo)), 0.0, 1.0) ** pt.gamma
    img = _resize(img.astype(np.float32), n)
    lesion = np.zeros((n, n), dtype=bool) if weight is None else _resize(weight.astype(np.float32), n) >= 0.25
    lung_mask = _resize(lung.astype(np.float32), n) >= 0.5
    img = img + (pt.noise / (pt.hi - pt.lo)) * trng.standard_normal((n, n), dtype=np.float32)
    img = ndimage.gaussian_filter(img, pt.blur * n / 512, mode="nearest")
    image = np.clip(img * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)

    shortcut = np.zeros((n, n), dtype=bool)
    if pt.marker:
        shortcut = _marker(n, pt.marker_xy)
        image[shortcut] = 245
    return Rendering(image=image, lesion=lesion, lung=lung_mask, shortcut=shortcut)


def _marker(n: int, xy: tuple[float, float]) -> np.ndarray:
    """A burned-in letter "L" about 5% of the image width tall, top-left corner at ``xy``."""
    h = max(5, round(0.055 * n))
    w = max(4, round(0.7 * h))
    stroke = max(2, round(0.22 * h))
    x0 = min(int(xy[0] * n), n - w - 1)
    y0 = min(int(xy[1] * n), n - h - 1)
    mask = np.zeros((n, n), dtype=bool)
    mask[y0 : y0 + h, x0 : x0 + stroke] = True
    mask[y0 + h - stroke : y0 + h, x0 : x0 + w] = True
    return mask
