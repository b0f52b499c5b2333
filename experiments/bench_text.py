"""Text encoder speed: sentences per second and the extra seconds per minute of video.

    python -m experiments.bench_text [--encoders minilm,mpnet] [--n 512] [--torch]

For each encoder (our NNX MiniLM and MPNet): sentences per second on real AnnoMI client
utterances (batch 32, after a first pass that compiles the bucketed shapes), and the cost
of the text of one minute of speech (150 words, 10 sentences: word vectors for the
transcript plus one sentence embedding per sentence). ``--torch`` times transformers'
PyTorch model on the same sentences beside it (same thread count). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
from flax import nnx

from level1_affect import annomi, encoders


def _minute_of_speech(texts: list[str]) -> tuple[str, list[str]]:
    """About one minute of speech (150 words) cut from ``texts``, and its 10 sentences."""
    words = " ".join(texts).split()[:150]
    return " ".join(words), [" ".join(words[i:i + 15]) for i in range(0, 150, 15)]


def bench_encoder(name: str, texts: list[str], repeats: int = 3) -> dict:
    """Load time, cold and warm sentences/s, and the warm cost of a minute of speech."""
    t0 = time.perf_counter()
    enc = encoders.load(name)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    enc.encode_sentences(texts)
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        enc.encode_sentences(texts)
        warm.append(time.perf_counter() - t0)
    transcript, sentences = _minute_of_speech(texts)
    enc.encode_words(transcript)
    enc.encode_sentences(sentences)
    minute = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        enc.encode_words(transcript)
        enc.encode_sentences(sentences)
        minute.append(time.perf_counter() - t0)
    params = sum(int(np.prod(v.get_value().shape))
                 for _, v in nnx.to_flat_state(nnx.state(enc.model, nnx.Param)))
    return {"encoder": name, "parameters_M": round(params / 1e6, 1),
        "load_s": round(load_s, 2), "sentences": len(texts),
        "sentences_per_s_cold": round(len(texts) / cold, 1),
        "sentences_per_s": round(len(texts) / float(np.median(warm)), 1),
        "seconds_per_minute_of_speech": round(float(np.median(minute)), 3)}


def bench_torch(name: str, texts: list[str], threads: int, repeats: int = 3) -> dict:
    """transformers' PyTorch model on the same sentences (batch 32, sorted by length)."""
    import torch
    import transformers
    torch.set_num_threads(threads)
    path = str(encoders.resolve(name))
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    order = sorted(texts, key=len)

    def run():
        with torch.no_grad():
            for b in range(0, len(order), 32):
                batch = tok(order[b:b + 32], padding=True, truncation=True, max_length=256,
                            return_tensors="pt")
                model(**batch)

    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"encoder": f"{name} (transformers PyTorch)",
            "sentences_per_s": round(len(texts) / float(np.median(times)), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default="minilm,mpnet")
    parser.add_argument("--n", type=int, default=512, help="AnnoMI client utterances timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch", action="store_true", help="time the PyTorch models beside")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    texts = [e.text for e in annomi.read_annomi(None) if e.text.strip()][:args.n]
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "load_before": open("/proc/loadavg").read().split()[:3]
              if os.path.exists("/proc/loadavg") else None, "rows": []}
    for name in args.encoders.split(","):
        print(f"[bench_text] {name} ...", file=sys.stderr, flush=True)
        report["rows"].append(bench_encoder(name, texts, args.repeats))
        if args.torch:
            report["rows"].append(bench_torch(name, texts, args.threads, args.repeats))
    if os.path.exists("/proc/loadavg"):
        report["load_after"] = open("/proc/loadavg").read().split()[:3]
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
