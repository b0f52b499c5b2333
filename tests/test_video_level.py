"""Video-level models: frame sampler, Video-FocalNet sizes, CLIP-style head, quick tables 3/4."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from baselines import backbones as bb
from baselines import face_pretrain as fp
from baselines import video_level as vl

# One compiled graph per model is far cheaper on CPU than op-by-op eager dispatch.
_eval = nnx.jit(lambda m, x: m(x, train=False))


@pytest.mark.parametrize("n,stride,first", [(8, 1, 0), (80, 10, 4), (100, 12, 7), (7, 1, 0),
                                            (1, 1, 0), (250, 31, 16)])
def test_sampler_picks_8_frames_at_the_video_stride(n, stride, first):
    idx = vl.sample_frame_indices(n)
    assert len(idx) == 8 and idx[0] == first and idx.max() < n
    if n >= 8:
        assert set(np.diff(idx)) == {stride}
    else:   # shorter than a clip: every frame once, then the last repeated
        np.testing.assert_array_equal(idx, np.minimum(np.arange(8), n - 1))
    rng = np.random.default_rng(0)
    starts = {vl.sample_frame_indices(n, rng=rng)[0] for _ in range(30)}
    assert all(s + stride * 7 < max(n, 8) for s in starts)


@pytest.mark.slow
def test_full_size_parameter_counts_match_the_published_models():
    count = lambda size, **kw: bb.count_params(lambda: vl.video_focalnet(size, rngs=nnx.Rngs(0), **kw))
    # Video-FocalNet (K400 head): T 49.55M, S 88.74M.
    assert count("tiny", num_classes=400) == pytest.approx(49.55e6, rel=2e-3)
    assert count("small", num_classes=400) == pytest.approx(88.74e6, rel=2e-3)
    # Without the temporal branch it is FocalNet (ImageNet head): T 28.4M.
    assert count("tiny", num_classes=1000, temporal=False) == pytest.approx(28.4e6, rel=3e-3)


@pytest.mark.slow
@pytest.mark.parametrize("size", list(vl.SIZES))
def test_video_focalnet_shapes_and_a_step_lowers_the_loss(size):
    model = vl.video_focalnet(size, 2, rngs=nnx.Rngs(0), reduced=True)
    clips = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 8, 32, 32, 3)), jnp.uint8)
    logits, aux = _eval(model, bb.normalize_images(clips))
    assert logits.shape == (4, 2) and aux["features"].shape == (4, model.feature_dim)
    with pytest.raises(ValueError, match="clips"):
        model(jnp.zeros((1, 4, 32, 32, 3)))
    if size == "tiny":
        tx = fp.make_optimizer(fp.TrainConfig(optimizer="adam", lr=3e-3, weight_decay=0.0), 10)
        opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
        y = jnp.asarray([0, 1, 0, 1])
        losses = [float(fp.train_step(model, opt, clips, y, jnp.ones(4))) for _ in range(4)]
        assert losses[-1] < losses[0]


def test_temporal_modulation_mixes_frames_and_spatial_only_does_not():
    x = jax.random.normal(jax.random.key(0), (1, 8, 16, 16, 3))
    y = x.at[:, 0].set(0.0)   # change frame 0 only
    for temporal, mixes in ((True, True), (False, False)):
        m = vl.VideoFocalNet(dataclasses.replace(vl.TINY["tiny"], temporal=temporal,
                                                 depths=(1,), drop_path=0.0), rngs=nnx.Rngs(0))
        f = nnx.jit(lambda m, v: m.stages[0][0].mod(m.stem(v.reshape(8, 16, 16, 3))))
        a, b = f(m, x), f(m, y)
        assert bool(jnp.abs(a[1:] - b[1:]).max() > 1e-6) == mixes


@pytest.mark.slow
def test_clip_style_uses_prompt_embeddings_and_trains():
    enc = bb.build_backbone("resnet18", 2, rngs=nnx.Rngs(0), **bb.TINY["resnet18"])
    text = np.random.default_rng(0).normal(size=(2, 384)).astype(np.float32)
    model = vl.ClipStyleVideo(enc, embed_dim=16, class_text=text, rngs=nnx.Rngs(1))
    clips = jnp.asarray(np.random.default_rng(1).integers(0, 256, (4, 8, 32, 32, 3)), jnp.uint8)
    logits, aux = _eval(model, bb.normalize_images(clips))
    assert logits.shape == (4, 2)
    np.testing.assert_allclose(np.linalg.norm(aux["features"], axis=-1), 1.0, atol=1e-5)
    # Logits are the scaled cosine similarities to the class embeddings.
    np.testing.assert_allclose(logits, (1 / 0.07) * aux["features"] @ aux["class_embeddings"].T,
                               rtol=1e-4)
    # The prompt embeddings are frozen (not a Param); their projection is trained.
    params = nnx.state(model, nnx.Param)
    assert "class_text" not in params and "text_proj" in params
    tx = fp.make_optimizer(fp.TrainConfig(optimizer="adam", lr=3e-3, weight_decay=0.0), 10)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    y = jnp.asarray([0, 1, 0, 1])
    losses = [float(fp.train_step(model, opt, clips, y, jnp.ones(4))) for _ in range(4)]
    assert losses[-1] < losses[0]
    np.testing.assert_array_equal(model.class_text.value, text)


def _quick_run(name, cfg, tmp_path):
    from experiments import run as runner
    results, run_dir = runner.run(name, cfg, tmp_path)
    assert (run_dir / "results.json").is_file() and (run_dir / "results.md").is_file()
    return results


@pytest.mark.slow
def test_table3_quick_runs_end_to_end(tmp_path):
    from experiments import table3
    cfg = dataclasses.replace(table3.get_config(quick=True), backbones=("resnet18",))
    results = _quick_run("table3", cfg, tmp_path)
    for split in ("val", "test"):
        for row in ("resnet18 (fine-tuned, frame-wise)", "resnet18 features + TCN"):
            m = results[split][row]
            assert 0 <= m["AVGF1"] <= 1 and 0 <= m["AP"] <= 1, (split, row, m)
    assert any("NOT reproduced" in n for n in results["notes"])


@pytest.mark.slow
def test_table4_quick_runs_end_to_end(tmp_path):
    from experiments import table4
    cfg = dataclasses.replace(table4.get_config(quick=True),
                              models=("video_focalnet_t",))   # CLIP-style: its own test
    results = _quick_run("table4", cfg, tmp_path)
    rows = {"Video-FocalNet-T", "question-only", "text-only (TF-IDF)"}
    for split in ("val", "test"):
        assert set(results[split]) == rows
        for m in results[split].values():
            assert 0 <= m["AVGF1"] <= 1 and 0 <= m["AP"] <= 1
    assert results["training"]["Video-FocalNet-T"]["epochs"] == 1
