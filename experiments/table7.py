"""The BAH paper's Table 7: zero-shot (M)LLMs with the Table 6 prompts, video and frame level.

``python -m experiments.run table7`` runs every prompt of ``baselines.llm.prompts`` at video
level (8 uniform frames, whole transcript) and frame level (8-frame segments, the words of
each segment) with every available backend (``--config.backend.kinds``: ``gguf``,
``openai``, ``videollava``), on the embedded demo dataset, or on a BAH tree with
``--data.root=PATH``; ``--config.splits=DIR`` reads BAH's video-level split files instead.
A backend that is not available is skipped with a note. docs/paper_setups.md ("Zero-shot")
describes the backends, the frame-level budget and the split-file mode.

Results: ``{"<split>-<level>": {"<backend>:<prompt>": {AVGF1, AP, WAR, F1_POS, F1_NEG,
AVGF1_REF, UNPARSED, N_ANSWERS, N_CALLS, SECONDS}}, "notes": [...]}``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from pathlib import Path

import numpy as np

from ahjax.core import metrics as metrics_lib
from ahjax.core.data.bah import load_bah, load_video_splits, parse_video_name, probe_video
from baselines.llm import backends as B
from baselines.llm import prompts as prompts_lib
from baselines.llm import zeroshot
from baselines.llm.backends import BackendUnavailable
from level1_affect.dataset import DataConfig, demo_root, prepare_store
from level1_affect.text import words_from_chunks

LEVEL1_ARRAYS = ("face_expr", "face_desc", "face_present", "voice_prosody", "text_affect")


@dataclasses.dataclass(frozen=True)
class BackendConfig:
    kinds: tuple = ("gguf", "openai", "videollava")   # each used when available
    gguf_path: str = ""            # "" = the gemma3_270m_gguf asset
    n_ctx: int = 2048
    threads: int = 0               # 0 = every core
    max_tokens: int = 8
    server_url: str = ""           # e.g. http://127.0.0.1:8000/v1 ; "" = no openai backend
    server_model: str = ""
    # auto | echo | first_token | none. Echo is exact, but llama_cpp.server sorts the whole
    # vocabulary in Python per echoed token (about 0.6 s each for Gemma's 262k): first_token there.
    server_scoring: str = "auto"
    server_timeout: float = 300.0  # seconds per request (a long prompt on a busy CPU is slow)
    server_video: bool = False     # send frames (a multimodal server)
    videollava_path: str = ""      # local Video-LLaVA-7B-hf folder; "" = no videollava backend
    device: str = ""               # "" = cuda when available


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    backend: BackendConfig = BackendConfig()
    splits: str = ""               # a folder of video-level split files: text-only mode
    split: str = "test"            # evaluated split; "all" = every video of the tree
    prompts: tuple = prompts_lib.ALL_PROMPTS
    levels: tuple = ("video", "frame")
    rule: str = "strict"           # strict | reference (how answers are parsed)
    unparsed: str = "score"        # strict rule: unparseable -> score | negative | positive
    segment: int = 8               # frames per frame-level segment
    stride: int = 0                # 0 = segment (no overlap)
    max_videos: int = 0            # 0 = all
    # Frame level costs one model call per distinct 8-frame segment (about 2.8 s of CPU each
    # for Gemma 270M on this 2-core machine): by default it runs on the first 4 videos only.
    frame_max_videos: int = 4      # 0 = all
    quick: bool = False


def get_config(quick: bool = False) -> Config:
    """The full table, or (``quick``) two prompts on two 3-4 s demo videos, 24-frame
    segments, for tests."""
    if not quick:
        return Config()
    return Config(data=DataConfig(demo_participants=2, demo_questions=(1, 4), demo_min_duration=3.0,
                                  demo_max_duration=4.0),
                  backend=BackendConfig(kinds=("gguf",), n_ctx=1024),
                  prompts=("simple", "transcript_simple"), split="all", max_videos=2,
                  segment=24, quick=True)


# ---- backends --------------------------------------------------------------------------
def build_backends(cfg: BackendConfig, notes: list) -> dict:
    """{name: backend} for each kind in ``cfg.kinds`` that can be built; why not, in notes."""
    out = {}
    for kind in cfg.kinds:
        if kind == "gguf":
            if importlib.util.find_spec("llama_cpp") is None:
                notes.append(f"gguf skipped: llama-cpp-python is not installed ({B.INSTALL_HINT})")
                continue
            out["gguf"] = B.LlamaCppBackend(cfg.gguf_path or None, n_ctx=cfg.n_ctx,
                                            n_threads=cfg.threads or None, max_tokens=cfg.max_tokens)
            notes.append(f"gguf: {out['gguf'].model_path.name}")
        elif kind == "openai":
            if not cfg.server_url:
                continue
            out["openai"] = B.OpenAIBackend(cfg.server_url, cfg.server_model,
                                            max_tokens=cfg.max_tokens, scoring=cfg.server_scoring,
                                            accepts_video=cfg.server_video,
                                            timeout=cfg.server_timeout)
        elif kind == "videollava":
            if not cfg.videollava_path:
                continue
            if importlib.util.find_spec("torch") is None:
                notes.append("videollava skipped: torch is not installed (pip install -e .[videollava])")
                continue
            from baselines.llm.videollava import VideoLlavaBackend   # imports torch
            out["videollava"] = VideoLlavaBackend.from_pretrained(cfg.videollava_path,
                                                                  device=cfg.device or None)
        else:
            raise ValueError(f"unknown backend kind {kind!r}; known: gguf, openai, videollava")
    return out


# ---- data ------------------------------------------------------------------------------
def tree_items(cfg: Config, notes: list) -> list[zeroshot.VideoItem]:
    """The evaluated videos of the tree (demo or ``data.root``) as inference items."""
    root = Path(cfg.data.root).expanduser() if cfg.data.root else demo_root(cfg.data)
    index = load_bah(root)
    videos = index.videos if cfg.split == "all" else index.split(cfg.split)
    if cfg.max_videos:
        videos = videos[: cfg.max_videos]
    items = []
    for rec in videos:
        path = rec.video_path if rec.video_path is not None and rec.video_path.is_file() else None
        n = len(rec.frame_labels) if rec.frame_labels is not None else (
            probe_video(path).n_frames if path else None)
        fps = rec.fps
        if not n or not fps:
            notes.append(f"{rec.video_id}: skipped (no frame count or fps without the video file)")
            continue
        items.append(zeroshot.VideoItem(
            video_id=rec.video_id, n_frames=int(n), fps=float(fps), transcript=rec.transcript,
            words=words_from_chunks(rec.chunks, end_time=n / fps), labels=rec.labels_for(int(n)),
            video_label=int(rec.video_label), video_path=str(path) if path else None))
    if not items:
        raise RuntimeError(f"no video to evaluate in split {cfg.split!r} of {root}")
    return items


def attach_level1(cfg: Config, items: list[zeroshot.VideoItem], notes: list) -> None:
    """Give each item its level-1 arrays (extracting the tree once, cached) for ``evidence``."""
    store, _, _ = prepare_store(cfg.data)
    have = set(store.video_ids())
    for item in items:
        if item.video_id in have:
            arrays = store.read_many(item.video_id, LEVEL1_ARRAYS)
            # Labels and arrays must cover the same frames; trust the shorter, mark the rest.
            n = min(len(a) for a in arrays.values())
            item.arrays = {k: np.asarray(v[:n]) for k, v in arrays.items()}
        else:
            notes.append(f"{item.video_id}: no level-1 features; evidence prompt skipped for it")


def _needs_video(backends: dict, items) -> bool:
    return any(b.accepts_video for b in backends.values()) and any(i.video_path is None for i in items)


# ---- runs ------------------------------------------------------------------------------
def _evaluate(name, backend, table: dict, key: str, notes: list, *args, **kwargs) -> bool:
    """``table[key] = zeroshot.evaluate(backend, ...)``; False (and a note) when the backend
    is unreachable, so one dead server does not lose the other backends' results."""
    t0 = time.perf_counter()
    try:
        table[key] = zeroshot.evaluate(backend, *args, **kwargs)
    except BackendUnavailable as err:
        notes.append(f"{name} stopped at {key}: {err}")
        print(f"{name}: {err}; its remaining rows are skipped", flush=True)
        return False
    print(f"{key}: AVGF1 {table[key]['AVGF1']:.4f} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return True


def run_tree(cfg: Config, workdir: Path) -> dict:
    notes: list = []
    backends = build_backends(cfg.backend, notes)
    if not backends:
        raise RuntimeError("no backend available: " + "; ".join(notes))
    items = tree_items(cfg, notes)
    if _needs_video(backends, items):
        raise RuntimeError("a multimodal backend needs the video files, and some are missing")
    prompts = list(cfg.prompts)
    if "evidence" in prompts:
        attach_level1(cfg, items, notes)
    results: dict = {}
    split = cfg.split
    for name, backend in backends.items():
        cache = zeroshot.AnswerCache()
        alive = True
        for level in cfg.levels:
            table = results.setdefault(f"{split}-{level}", {})
            for prompt in prompts:
                use = [i for i in items if prompt != "evidence" or i.arrays]
                if level == "frame" and cfg.frame_max_videos:
                    use = use[: cfg.frame_max_videos]
                alive = alive and _evaluate(
                    name, backend, table, f"{name}:{prompt}", notes, use, prompt, level,
                    rule=cfg.rule, unparsed=cfg.unparsed, size=cfg.segment,
                    stride=cfg.stride or None, cache=cache, log=print)
        notes.append(f"{name}: {cache.calls} model calls, {cache.hits} answered from the cache")
    frame_n = min(len(items), cfg.frame_max_videos or len(items))
    notes.append(f"{len(items)} videos of split {split!r} at video level, the first {frame_n} at "
                 "frame level; the five Table 6 prompts verbatim (baselines/llm/prompts.py), "
                 "transcript_simple and evidence are ours")
    results["notes"] = notes
    return results


def question_only(train, evaluated) -> dict:
    """Metrics of the train-set A/H rate of each video's question as its probability."""
    q_tr = np.array([parse_video_name(e.video_id)[1] for e in train])
    y_tr = np.array([e.label for e in train])
    rate = {int(q): float(y_tr[q_tr == q].mean()) for q in np.unique(q_tr)}
    probs = np.array([rate.get(parse_video_name(e.video_id)[1], float(y_tr.mean())) for e in evaluated])
    labels = np.array([e.label for e in evaluated])
    m = metrics_lib.bah_metrics(labels, probs)
    return {k: m[k] for k in ("AVGF1", "AP", "WAR", "F1_POS", "F1_NEG")}


def run_splits(cfg: Config, workdir: Path) -> dict:
    notes: list = []
    splits = load_video_splits(cfg.splits)
    if "train" not in splits:
        raise RuntimeError(f"{cfg.splits}: a train split is needed for the question-only baseline")
    split = cfg.split if cfg.split in splits else "val"
    evaluated = splits[split]
    if cfg.max_videos:
        # Keep both classes: the first max_videos/2 of each.
        pos = [e for e in evaluated if e.label == 1][: cfg.max_videos // 2]
        neg = [e for e in evaluated if e.label == 0][: cfg.max_videos - len(pos)]
        evaluated = pos + neg
    backends = {k: b for k, b in build_backends(cfg.backend, notes).items() if not b.accepts_video}
    items = [zeroshot.VideoItem(video_id=e.video_id, n_frames=1, fps=1.0, transcript=e.transcript,
                                words=[], labels=np.array([e.label]), video_label=e.label)
             for e in evaluated]
    table = {"question_only": question_only(splits["train"], evaluated)}
    prompts = [p for p in cfg.prompts if p in prompts_lib.TRANSCRIPT_PROMPTS]
    for name, backend in backends.items():
        cache = zeroshot.AnswerCache()
        for prompt in prompts:
            if not _evaluate(name, backend, table, f"{name}:{prompt}", notes, items, prompt,
                             "video", rule=cfg.rule, unparsed=cfg.unparsed, cache=cache, log=print):
                break
    notes.append(f"{len(items)} videos of split {split!r} from {cfg.splits} "
                 f"({sum(e.label for e in evaluated)} with A/H); transcript prompts only")
    if not backends:
        notes.append("no text-only backend available: only the question-only baseline")
    return {f"{split}-video": table, "notes": notes}


def run(config: Config, workdir) -> dict:
    """Table 7 on a tree (demo or ``data.root``) or, with ``splits``, on split files."""
    workdir = Path(workdir)
    return run_splits(config, workdir) if config.splits else run_tree(config, workdir)
