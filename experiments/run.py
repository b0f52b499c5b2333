"""The one experiment runner: ``python -m experiments.run NAME [--config.key=value ...]``.

Each experiment is a module in ``experiments/`` with ``get_config(quick: bool)`` returning a
frozen config and ``run(config, workdir) -> dict`` returning results shaped
``{split: {method: {metric: number}}, ...}``. The runner parses overrides, makes the run
folder (``config.json``, ``results.json``, ``results.md``, ``plots/``, checkpoints) and
writes the tables; it holds no experiment logic. JAX's persistent compilation cache is on
(under ``$AHJAX_CACHE/jax-cache``; ``AHJAX_JAX_CACHE=0`` turns it off), so a second run of
an experiment skips most compilation.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from ahjax.core import config as config_lib
from ahjax.core import interrupt
from ahjax.core import results as results_lib
from ahjax.core.assets import enable_compilation_cache
from ahjax.core.train import engine

# Experiment name -> (module path, one line on what it reproduces). A plain dict: nothing is
# imported until an experiment is asked for.
EXPERIMENTS = {
    "two_level": ("experiments.two_level",
                  "the interpretable two-level conflict model, its ablations and baselines"),
    "concat_tcn": ("experiments.concat_tcn",
                   "per-modality TCN with concatenation fusion (frame level)"),
    "text_video_level": ("experiments.text_video_level",
                         "video-level A/H from transcripts on BAH's real split files"),
    "talk_type": ("experiments.talk_type",
                  "change / neutral / sustain talk on AnnoMI, learned model vs lexicon and TF-IDF"),
    "table7": ("experiments.table7", "zero-shot (M)LLMs with the Table 6 prompts, video and frame level"),
    "table5": ("experiments.table5", "personalisation by domain adaptation, one target per test subject"),
    "table3": ("experiments.table3", "visual backbones (ResNet18-152, APViT) at frame level"),
    "table4": ("experiments.table4", "video level: Video-FocalNet T/S/B, CLIP-style, question-only, text-only"),
    "table1": ("experiments.table1", "visual modality without vs with temporal context (frame level)"),
    "table2": ("experiments.table2", "frame-level fusion: CAN/LFAN/MT/JMT x modality subsets"),
}


def load(name: str):
    """The experiment module registered under ``name``."""
    if name not in EXPERIMENTS:
        raise SystemExit(f"unknown experiment {name!r}; known: {', '.join(sorted(EXPERIMENTS))}")
    return importlib.import_module(EXPERIMENTS[name][0])


def build_config(name: str, overrides: list[str]):
    """The experiment's config with ``overrides`` applied (``--config.quick=True`` first)."""
    module = load(name)
    quick = any(o.replace("--config.", "--").lower() in ("--quick=true", "--quick=1")
                for o in overrides)
    return config_lib.apply_overrides(module.get_config(quick=quick), overrides)


def _config_json(config) -> dict:
    """``config`` as it reads back from ``config.json`` (tuples become lists)."""
    return json.loads(json.dumps(config_lib.to_dict(config)))


def resume_dir(resume: str | Path, config) -> Path:
    """``resume`` as a run folder whose ``config.json`` is ``config``; else a clear error."""
    run_dir = Path(resume)
    saved = run_dir / "config.json"
    if not saved.is_file():
        raise FileNotFoundError(f"--resume {run_dir}: no config.json (not a run folder)")
    if json.loads(saved.read_text()) != _config_json(config):
        raise ValueError(f"--resume {run_dir}: its config.json differs from this command's "
                         "config; resume with the overrides it was run with")
    return run_dir


def run(name: str, config, workdir: str | Path, resume: str | Path | None = None
        ) -> tuple[dict, Path]:
    """Run experiment ``name`` with ``config`` in a new folder under ``workdir``, or (with
    ``resume``) again in an earlier run's folder, whose trainings then continue from their
    checkpoints; its ``config.json`` must match ``config``."""
    module = load(name)
    # Compiled programs are reused across runs ($AHJAX_JAX_CACHE=0 turns this off).
    enable_compilation_cache()
    if resume is not None:
        run_dir = resume_dir(resume, config)
        (run_dir / "plots").mkdir(exist_ok=True)
    else:
        run_dir = _new_run_dir(Path(workdir), name)
        if engine.is_main_process():
            (run_dir / "plots").mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(json.dumps(_config_json(config), indent=2))
        _barrier("run folder made")
    main_process = engine.is_main_process()   # only process 0 writes the run's own files
    if main_process:
        (run_dir / FAILED).unlink(missing_ok=True)
    def marked(signum):   # a signal ends the process: the folder says so, as below
        if main_process:
            (run_dir / FAILED).write_text(f"interrupted by signal {signum}\n")
        return f"run folder {run_dir} marked failed ({FAILED}); --resume {run_dir} goes on"

    try:
        with interrupt.on_signal(marked):
            results = module.run(config, run_dir)
    except BaseException as err:   # interrupted runs are marked too; resume clears it
        import traceback
        if main_process:
            (run_dir / FAILED).write_text(
                f"{type(err).__name__}: {err}\n\n" + "".join(traceback.format_exception(err)))
        err.run_dir = run_dir      # for the one-line message of main()
        raise
    if main_process:
        results_lib.write(results, run_dir, title=name)
    return results, run_dir


def _new_run_dir(workdir: Path, name: str) -> Path:
    """A new ``<name>-<stamp>`` folder name under ``workdir``; in a multi-process run,
    process 0's choice, shared with the others."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = workdir / f"{name}-{stamp}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = workdir / f"{name}-{stamp}-{suffix}"
    if jax_process_count() > 1:
        from jax.experimental import multihost_utils
        code = np.frombuffer(str(run_dir).encode().ljust(1024, b"\0"), np.uint8)
        code = np.asarray(multihost_utils.broadcast_one_to_all(code))
        run_dir = Path(code.tobytes().rstrip(b"\0").decode())
    return run_dir


def jax_process_count() -> int:
    import jax
    return jax.process_count()


def _barrier(name: str) -> None:
    if jax_process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


FAILED = "FAILED.txt"   # written into a run folder whose experiment raised, with the error


def _join_values(args: list[str]) -> list[str]:
    """Accept ``--data.root PATH`` as well as ``--data.root=PATH``."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and "=" not in arg and i + 1 < len(args) \
                and not args[i + 1].startswith("--"):
            out.append(f"{arg}={args[i + 1]}")
            i += 2
        else:
            out.append(arg)
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__.split("\n")[0])
    parser.add_argument("name", nargs="?", help="experiment to run (see --list)")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    parser.add_argument("--workdir", default="runs", help="where run folders go (default runs/)")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="run again in this earlier run folder (same overrides): "
                             "finished trainings are restored from their checkpoints")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (or AHJAX_DEBUG=1)")
    parser.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                        help="multi-process JAX: process 0's address ($AHJAX_COORDINATOR)")
    parser.add_argument("--num-processes", type=int, default=None,
                        help="multi-process JAX: how many processes ($AHJAX_NUM_PROCESSES)")
    parser.add_argument("--process-id", type=int, default=None,
                        help="multi-process JAX: this process, 0-based ($AHJAX_PROCESS_ID)")
    args, rest = parser.parse_known_args(argv)
    overrides = _join_values(rest)
    if args.list or not args.name:
        for name in sorted(EXPERIMENTS):
            print(f"{name:20s} {EXPERIMENTS[name][1]}")
        return 0
    try:
        # Before any JAX computation: the mesh of every training then spans all processes.
        engine.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        config = build_config(args.name, overrides)
    except (config_lib.ConfigError, ValueError) as err:   # ValueError: a config's own check
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.resume is not None:
        try:
            resume_dir(args.resume, config)
        except (FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    try:
        with interrupt.exit_on_signals():   # SIGINT/SIGTERM: run folder marked, one line
            results, run_dir = run(args.name, config, args.workdir, resume=args.resume)
    except (OSError, ValueError) as err:   # bad input (data, files, settings): one line, exit 2
        if config_lib.debug_requested(args.debug):
            raise
        where = getattr(err, "run_dir", None)
        print(f"error: {err}", file=sys.stderr)
        if where is not None:
            print(f"(run folder {where} marked failed: {where / FAILED}; --debug shows the "
                  "traceback)", file=sys.stderr)
        return 2
    if engine.is_main_process():
        print((run_dir / "results.md").read_text())
        print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
