"""Face track: mini-Xception port, FaceLandmarker, alignment, missing faces, video I/O.

Runs the real weights on the one real face available offline, ``skimage.data.astronaut()``
(a smiling woman), so the checks are about the actual models, not mocks.
"""

import av
import cv2
import mediapipe as mp
import numpy as np
import pytest
import skimage.data
from mediapipe.tasks.python import BaseOptions, vision

from ahjax.core import assets
from level1_affect import face as face_lib
from level1_affect import media
from level1_affect.errors import MediaError
from level1_affect import fer as fer_lib
from level1_affect.fer import ExpressionModel, preprocess
from level1_affect.schema import FACE_DESC, FACE_EXPR

HAPPY = FACE_EXPR.index("happy")
D = {name: i for i, name in enumerate(FACE_DESC)}


@pytest.fixture(scope="module")
def astronaut():
    return skimage.data.astronaut()  # (512, 512, 3) uint8 RGB


@pytest.fixture(scope="module")
def encoder():
    return face_lib.FaceEncoder(batch_size=16)


def _detect_image(image):
    """Landmarks in pixels from an independent IMAGE-mode landmarker (None if no face)."""
    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(assets.fetch("face_landmarker"))),
        running_mode=vision.RunningMode.IMAGE, num_faces=1)
    with vision.FaceLandmarker.create_from_options(options) as lm:
        result = lm.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
    if not result.face_landmarks:
        return None
    h, w = image.shape[:2]
    return np.array([(p.x * w, p.y * h) for p in result.face_landmarks[0]])


def _write_video(path, frames, fps=25):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4",
                                rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_fer_graph_and_parameter_count():
    model = ExpressionModel.load()
    assert model.num_params() == 58_423
    kinds = [kind for _, kind, _, _ in model.nodes]
    assert kinds.count("SeparableConv2D") == 8 and kinds.count("Add") == 4
    x = preprocess(np.array([[[0, 255]]], np.uint8))  # (1, 1, 2) grey
    assert x.shape == (1, 64, 64, 1) and x.min() == -1.0 and x.max() == 1.0


@pytest.mark.parametrize("padding,k", [("same", 3), ("valid", 3), ("same", 2)])
def test_fast_depthwise_matches_grouped_convolution(padding, k):
    rng = np.random.default_rng(k)
    x = rng.normal(size=(2, 9, 7, 5)).astype(np.float32)
    kernel = rng.normal(size=(k, k, 5, 1)).astype(np.float32)
    ref = fer_lib._conv(x, kernel.reshape(k, k, 1, 5), (1, 1), padding, groups=5)
    np.testing.assert_allclose(fer_lib._depthwise(x, kernel, (1, 1), padding), ref, atol=1e-5)


def test_fer_ranks_happy_first_and_batches_independently(astronaut):
    model = ExpressionModel.load(batch_size=4)
    lms = _detect_image(astronaut)
    crop = face_lib.align_face(astronaut, lms)
    grey = np.full_like(crop, 128)
    probs = model(np.stack([crop, grey, crop, grey, crop]))  # 5 rows: two padded batches
    assert probs.shape == (5, 7)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert probs[0].argmax() == HAPPY and probs[0, HAPPY] > 0.9
    np.testing.assert_allclose(probs[0], probs[4], atol=1e-6)  # padding does not leak
    assert probs[1].argmax() != HAPPY


def test_astronaut_landmarks_blendshapes_expression(encoder, astronaut):
    r = encoder.encode([astronaut], fps=30, return_crops=True, return_landmarks=True)
    assert r["face_present"].tolist() == [[1.0]]
    assert r["landmarks"].shape == (1, 478, 3)
    blend = dict(zip(face_lib.BLENDSHAPES, r["face_blend"][0]))
    assert blend["mouthSmileLeft"] > 0.5 and blend["mouthSmileRight"] > 0.5
    assert r["face_expr"][0].argmax() == HAPPY
    desc = r["face_desc"][0]
    assert desc[D["smile"]] > 0.5 and desc[D["valence"]] > 0.5
    assert desc[D["expr_entropy"]] < 0.3 and desc[D["head_motion"]] == 0.0
    assert r["face_crops"].shape == (1, 256, 256, 3) and r["face_crops"].dtype == np.uint8


def test_crop_is_upright_and_centred_even_for_a_tilted_head(encoder, astronaut):
    tilted = cv2.warpAffine(astronaut, cv2.getRotationMatrix2D((256, 256), 20, 1.0), (512, 512))
    crop = encoder.encode([tilted], fps=30, return_crops=True)["face_crops"][0]
    # Landmarks found anew on the crop itself, by a separate landmarker.
    eyes = face_lib.alignment_points(_detect_image(crop))[:2]
    assert abs(eyes[0, 1] - eyes[1, 1]) < 0.02 * 256          # eyes horizontal
    assert abs(eyes[:, 0].mean() - 128) < 0.03 * 256           # face centred
    assert eyes[0, 0] < eyes[1, 0]                             # not mirrored or upside down


def test_tracking_survives_a_jump(encoder, astronaut):
    # VIDEO mode tracks; a face that jumps between frames must be re-detected, not dropped.
    tilted = cv2.warpAffine(astronaut, cv2.getRotationMatrix2D((256, 256), 20, 1.0), (512, 512))
    r = encoder.encode([tilted, astronaut, astronaut, tilted], fps=30)
    assert r["face_present"].ravel().tolist() == [1, 1, 1, 1]
    motion = r["face_desc"][:, D["head_motion"]]
    assert motion[1] > 0.5 and motion[3] > 0.5 and motion[2] < 0.05


def test_small_face_in_a_wide_frame_is_found_by_window_search(encoder, astronaut):
    # The astronaut's face (about 100 px) off-centre in a 1280x720 frame: too small for the
    # detector on the whole frame, found in a window and mapped back to frame coordinates.
    ref = encoder.encode([astronaut], fps=25, return_landmarks=True)["landmarks"][0, :, :2] * 512
    frame = np.full((720, 1280, 3), 90, np.uint8)
    frame[100:612, 700:1212] = astronaut
    r = encoder.encode([frame, frame], fps=25, return_landmarks=True)
    assert r["face_present"].ravel().tolist() == [1, 1]
    found = r["landmarks"][:, :, :2] * (1280, 720)
    assert np.abs(found - (ref + (700, 100))).mean() < 2.0
    assert r["face_expr"][:, HAPPY].min() > 0.9
    off = face_lib.FaceEncoder(search_windows=False, expression_model=encoder.expression)
    assert not off.encode([frame], fps=25)["face_present"].any()


def test_blank_frame_has_no_face(encoder):
    r = encoder.encode(np.full((1, 240, 320, 3), 128, np.uint8), fps=25)
    assert r["face_present"].tolist() == [[0.0]]
    for name in ("face_expr", "face_blend", "face_desc"):
        assert not r[name].any()


def test_missing_face_reuses_previous(encoder, astronaut):
    blank = np.full_like(astronaut, 128)
    r = encoder.encode(iter([blank, astronaut, blank, astronaut]), fps=25, return_crops=True,
                       return_landmarks=True)
    assert r["face_present"].ravel().tolist() == [0, 1, 0, 1]
    assert not r["face_blend"][0].any() and not r["face_crops"][0].any()  # before any face
    for name in ("face_blend", "face_expr", "face_crops", "landmarks"):
        np.testing.assert_array_equal(r[name][2], r[name][1])
    assert r["face_desc"][3, D["head_motion"]] == 0.0  # no motion across a gap


def test_descriptor_mapping():
    expr = np.eye(7, dtype=np.float32)[[HAPPY, FACE_EXPR.index("sad")]]
    expr = np.concatenate([expr, np.full((1, 7), 1 / 7, np.float32)])
    desc = face_lib.face_descriptors(expr, np.zeros((3, 52), np.float32), np.zeros(3))
    assert desc.shape == (3, 9)
    np.testing.assert_allclose(desc[:2, [D["valence"], D["arousal"]]],
                               [face_lib.CIRCUMPLEX["happy"], face_lib.CIRCUMPLEX["sad"]])
    np.testing.assert_allclose(desc[:, D["expr_entropy"]], [0, 0, 1], atol=1e-6)


def test_video_roundtrip_and_subsampled_detection(encoder, astronaut, tmp_path):
    frames = [cv2.warpAffine(astronaut, np.float32([[1, 0, 2 * i], [0, 1, i]]), (512, 512))
              for i in range(12)]
    path = tmp_path / "astronaut.mp4"
    _write_video(path, frames, fps=25)
    it, fps, n = media.read_video_frames(path)
    assert fps == pytest.approx(25) and n == 12
    r = encoder.encode(it, fps, return_landmarks=True)
    assert r["face_present"].shape == (12, 1) and r["face_present"].mean() >= 11 / 12
    motion = r["face_desc"][1:, D["head_motion"]]
    assert np.all(motion > 0) and np.all(motion < 0.2)  # a few pixels per frame
    assert np.mean(r["face_expr"].argmax(1) == HAPPY) >= 11 / 12

    sub = face_lib.FaceEncoder(detect_every=5, batch_size=16,
                               expression_model=encoder.expression)
    s = sub.encode_file(path, return_landmarks=True)
    assert s["fps"] == pytest.approx(25)
    assert s["face_present"].shape == (12, 1) and s["face_present"].all()
    # Interpolated landmarks stay within 1% of the frame of those detected every frame.
    assert np.abs(s["landmarks"][..., :2] - r["landmarks"][..., :2]).mean() < 0.01
    assert np.abs(s["face_blend"] - r["face_blend"]).max() < 0.15


def test_bad_videos_raise_media_error(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(MediaError, match="junk.mp4"):
        media.read_video_frames(junk)
    good = tmp_path / "good.mp4"
    _write_video(good, [np.zeros((64, 64, 3), np.uint8)] * 5)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(MediaError, match="cut.mp4"):
        media.read_video_frames(cut)
    with pytest.raises(MediaError, match="missing.mp4"):
        media.read_video_frames(tmp_path / "missing.mp4")
    assert issubclass(MediaError, ValueError)


def test_session_pushed_in_pieces_equals_encode(encoder, astronaut):
    """A live stream pushes frames as they arrive: uneven pieces, with detect_every > 1
    holding back the frames after the latest keyframe, give the rows of one encode call;
    a change of detect_every mid-stream applies at once."""
    blank = np.full_like(astronaut, 128)
    frames = [cv2.warpAffine(astronaut, np.float32([[1, 0, 3 * i], [0, 1, i]]), (512, 512))
              for i in range(11)]
    frames[4] = blank
    sub = face_lib.FaceEncoder(detect_every=3, batch_size=4, expression_model=encoder.expression)
    whole = sub.encode(iter(frames), fps=25, return_landmarks=True)
    with sub.session(25, return_landmarks=True) as session:
        parts, given = [], 0
        for piece in (1, 3, 2, 5):
            got = session.push(frames[given:given + piece])
            given += piece
            assert session.n_done <= given and len(got["face_present"]) <= piece + 2
            parts.append(got)
        parts.append(session.close())
    assert session.n_done == 11
    for key in whole:
        np.testing.assert_allclose(np.concatenate([p[key] for p in parts]), whole[key],
                                   atol=1e-5, err_msg=key)
    # Keyframes every 3rd frame hold back at most 2 frames after each push.
    with sub.session(25) as session:
        assert len(session.push(frames[:2])["face_present"]) == 1   # frame 0 is a keyframe
        session.detect_every = 1
        assert len(session.push(frames[2:5])["face_present"]) == 4  # frames 1 to 4
        assert session.n_done == 5 and len(session.close()["face_present"]) == 0
