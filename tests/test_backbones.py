"""Frame-level backbones: shapes, full-size parameter counts, APViT token selection, training.

Forward passes use the reduced variants (``backbones.TINY``) at 32x32; full sizes are only
built abstractly (``nnx.eval_shape``) to count parameters against the published numbers.
"""

import dataclasses

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from baselines import backbones as bb
from baselines import face_pretrain as fp
from ahjax.core.data.store import FeatureStore


@pytest.mark.slow
def test_resnet_parameter_counts_equal_torchvision():
    # torchvision's counts with a 1000-class head (11.7M, 21.8M, 25.6M, 44.5M, 60.2M).
    expected = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                "resnet101": 44_549_160, "resnet152": 60_192_808}
    for name, n in expected.items():
        assert bb.count_params(lambda: bb.build_backbone(name, 1000, rngs=nnx.Rngs(0))) == n


@pytest.mark.slow
@pytest.mark.parametrize("name", list(bb.BACKBONES))
def test_every_backbone_gives_logits_and_features(name):
    model = bb.build_backbone(name, 3, rngs=nnx.Rngs(0), **bb.TINY[name])
    logits, aux = nnx.jit(lambda m, x: m(x, train=False))(model, jnp.zeros((2, 32, 32, 3)))
    assert logits.shape == (2, 3)
    assert aux["features"].shape == (2, model.feature_dim)
    assert np.all(np.isfinite(np.asarray(logits)))


@pytest.mark.slow
def test_apvit_keeps_top_k_patches_and_full_size_is_vit_small_like():
    cfg = dataclasses.replace(bb.APViTConfig(**bb.TINY["apvit"]), keep_patches=40,
                              atp_layers=(1,), atp_keep=(12,))
    model = bb.APViT(cfg, 2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
    _, aux = model(x, train=False)
    kept = np.asarray(aux["kept_patches"])
    assert kept.shape == (3, 12)                      # APP 64 -> 40, then ATP -> 12
    assert (np.diff(kept, axis=1) > 0).all()          # distinct, in spatial order
    assert kept.max() < cfg.num_patches()
    tokens = jnp.arange(10.0)[None, :, None] * jnp.ones((1, 1, 4))
    got, idx = bb.keep_top_k(tokens, jnp.array([[0, 9, 1, 8, 2, 7, 3, 6, 4, 5.0]]), 3)
    np.testing.assert_array_equal(idx, [[1, 3, 5]])
    np.testing.assert_array_equal(got[0, :, 0], [1, 3, 5])
    full = bb.count_params(lambda: bb.build_backbone("apvit", 7, rngs=nnx.Rngs(0)))
    assert 10e6 < full < 15e6


def _step_lowers_loss(model, images, labels, steps=4):
    tx = fp.make_optimizer(fp.TrainConfig(optimizer="adam", lr=3e-3, weight_decay=0.0), 10)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    w = jnp.ones(labels.shape)
    losses = [float(fp.train_step(model, opt, images, labels, w)) for _ in range(steps)]
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "apvit"])
def test_training_steps_lower_the_loss_on_a_fixed_batch(name):
    model = bb.build_backbone(name, 2, rngs=nnx.Rngs(0), **bb.TINY[name])
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (8, 32, 32, 3)), jnp.uint8)
    labels = jnp.asarray([0, 1] * 4)
    losses = _step_lowers_loss(model, images, labels)
    assert losses[-1] < losses[0]


@pytest.fixture(scope="module")
def emotion_folder(tmp_path_factory):
    """Two 'emotions' made from the real face photo: upright vs rotated-and-mirrored crops."""
    from skimage import data
    face = data.astronaut()[20:220, 140:340]
    root = tmp_path_factory.mktemp("emotions")
    rng = np.random.default_rng(0)
    for cls in ("happy", "sad"):
        (root / cls).mkdir()
        for i in range(12):
            m = cv2.getRotationMatrix2D((100, 100), rng.uniform(-8, 8) + (0 if cls == "happy" else 180),
                                        rng.uniform(0.9, 1.1))
            img = cv2.warpAffine(face, m, (200, 200), borderMode=cv2.BORDER_REFLECT)
            cv2.imwrite(str(root / cls / f"{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return root


@pytest.mark.slow
def test_fit_restores_the_later_of_tied_best_epochs(emotion_folder, tmp_path):
    # Epochs 1 and 3 tie for the best score; the checkpointer keeps the later one (and the
    # latest two), so restoring the earlier one would find it deleted.
    source = fp.EmotionFolder(emotion_folder, 32)
    cfg = fp.ImageTrainConfig(image_size=32, batch_size=8, epochs=6,
                              optim=fp.TrainConfig(optimizer="adam", lr=3e-3, weight_decay=0.0))
    scores = iter([0.1, 0.5, 0.3, 0.5, 0.2, 0.1])
    snapshots = []

    def validate(m):
        snapshots.append(fp.predict_frames(m, np.stack([source[0]["image"]]), 1)[0])
        return next(scores)

    model = bb.build_backbone("resnet18", 2, rngs=nnx.Rngs(0), **bb.TINY["resnet18"])
    history = fp.fit(model, source, cfg, tmp_path, validate=validate, log=lambda _: None)
    assert [h["score"] for h in history] == [0.1, 0.5, 0.3, 0.5, 0.2, 0.1]
    np.testing.assert_allclose(fp.predict_frames(model, np.stack([source[0]["image"]]), 1)[0],
                               snapshots[3], atol=1e-5)


@pytest.mark.slow
def test_pretraining_on_an_emotion_folder_lowers_the_loss_and_resumes(emotion_folder, tmp_path):
    source = fp.EmotionFolder(emotion_folder, 32)
    assert source.classes == ["happy", "sad"] and len(source) == 24
    item = fp.augment(source[0], np.random.default_rng(0), min_crop=0.8, flip=True)
    assert item["image"].shape == (32, 32, 3) and item["image"].dtype == np.uint8
    cfg = fp.ImageTrainConfig(image_size=32, batch_size=8, epochs=3,
                              optim=fp.TrainConfig(optimizer="adam", lr=3e-3, weight_decay=0.0))
    model = bb.build_backbone("resnet18", 2, rngs=nnx.Rngs(0), **bb.TINY["resnet18"])
    history = fp.pretrain(model, emotion_folder, cfg, tmp_path)
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[-1]["loss"] < history[0]["loss"]
    # A second run in the same folder resumes after the last epoch: nothing left to do.
    again = bb.build_backbone("resnet18", 2, rngs=nnx.Rngs(5), **bb.TINY["resnet18"])
    assert fp.fit(again, source, cfg, tmp_path, log=lambda _: None) == history
    x = np.stack([source[i]["image"] for i in range(4)])
    np.testing.assert_allclose(fp.predict_frames(again, x, 4)[0], fp.predict_frames(model, x, 4)[0],
                               atol=1e-5)
    with pytest.raises(ValueError, match="2 emotion classes"):
        fp.pretrain(bb.build_backbone("resnet18", 7, rngs=nnx.Rngs(0), **bb.TINY["resnet18"]),
                    emotion_folder, cfg, None)


def test_frame_items_undersample_negatives_and_skip_unlabelled():
    labels = [np.array([0] * 20 + [1] * 4 + [-1] * 4), np.array([0] * 10)]
    items = fp.frame_items(labels, stride=1, neg_ratio=2.0, seed=0)
    assert (items[:, 2] == 1).sum() == 4 and (items[:, 2] == 0).sum() == 8
    assert all(labels[v][f] == y for v, f, y in items)
    every = fp.frame_items(labels, stride=2)
    assert len(every) == 12 + 5 and set(every[:, 1] % 2) == {0}


@pytest.mark.slow
def test_finetune_on_demo_crops_and_write_features(tmp_path):
    from experiments import table3
    cfg = dataclasses.replace(table3.get_config(quick=True), backbones=("resnet18",))
    data = table3.load_crops(cfg)
    rec, crops, labels = data["train"][0]
    assert crops.shape[1:] == (32, 32, 3) and len(labels) == len(crops)
    assert crops.std() > 10          # a real face, not blank frames
    items = fp.frame_items([y for _, _, y in data["train"]], stride=8, neg_ratio=1.0)
    model = bb.build_backbone("resnet18", 2, rngs=nnx.Rngs(0), **bb.TINY["resnet18"])
    hist = fp.fit(model, fp.CropFrames([c for _, c, _ in data["train"]], items[:16]),
                  dataclasses.replace(cfg.finetune, batch_size=16), None, log=lambda _: None)
    assert len(hist) == 1 and np.isfinite(hist[0]["loss"])
    feats = fp.extract_visual_features(model, crops, batch_size=32)
    assert feats.shape == (len(crops), model.feature_dim)
    store = FeatureStore(tmp_path / "store")
    fp.write_visual_features(store, rec.video_id, "face_resnet18", feats,
                             {"split": "train", "arrays": {"labels": labels}})
    fp.write_visual_features(store, rec.video_id, "face_other", feats[:, :3])
    assert store.read(rec.video_id, "face_resnet18").shape == feats.shape
    assert store.meta(rec.video_id)["shapes"]["face_other"] == [len(crops), 3]
    with pytest.raises(ValueError, match="feature rows"):
        fp.write_visual_features(store, rec.video_id, "bad", feats[:5])


@pytest.mark.parametrize("name", ["resnet18", "apvit"])
def test_bfloat16_compute_keeps_float32_weights_and_close_outputs(name):
    """Mixed precision for GPUs: layers compute in bfloat16, weights stay float32, and the
    logits stay close to float32's (bfloat16 keeps 8 bits of mantissa)."""
    model = bb.build_backbone(name, 3, rngs=nnx.Rngs(0), **bb.TINY[name])
    x = bb.normalize_images(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)))
    ref, _ = model(x)
    bb.set_compute_dtype(model, "bfloat16")
    low, aux = model(x)
    assert low.dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    scale = float(jnp.abs(ref).max())
    assert float(jnp.abs(low.astype(jnp.float32) - ref).max()) < 0.05 * scale + 0.05
    bb.set_compute_dtype(model, "float32")
    np.testing.assert_allclose(model(x)[0], ref, atol=1e-6)
    with pytest.raises(ValueError, match="compute dtype 'float16': one of float32, bfloat16"):
        bb.set_compute_dtype(model, "float16")


@pytest.mark.slow
def test_fit_in_bfloat16_trains_float32_weights(emotion_folder):
    source = fp.EmotionFolder(emotion_folder, 32)
    cfg = fp.ImageTrainConfig(image_size=32, batch_size=8, epochs=2, compute_dtype="bfloat16",
                              optim=fp.TrainConfig(optimizer="adam", lr=3e-3, weight_decay=0.0))
    model = bb.build_backbone("resnet18", 2, rngs=nnx.Rngs(0), **bb.TINY["resnet18"])
    before = jax.tree.map(np.array, nnx.state(model, nnx.Param))
    history = fp.fit(model, source, cfg, None, log=lambda _: None)
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    after = nnx.state(model, nnx.Param)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(after))
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
    x = np.stack([source[0]["image"]])
    assert fp.predict_frames(model, x, 1)[0].dtype == np.float32   # back to float32 after fit
    with pytest.raises(ValueError, match="compute_dtype='half'"):
        fp.ImageTrainConfig(compute_dtype="half")
