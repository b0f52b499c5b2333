#!/usr/bin/env bash
# Install llama-cpp-python (the zero-shot GGUF backend) and its server extra without
# rebuilding it every time: PyPI ships it only as source, and compiling llama.cpp takes
# many minutes on a 2-core machine. The first run builds a wheel into the cache
# ($AHJAX_CACHE/wheels, default ~/.cache/ahjax/wheels); later runs install that wheel.
#
#   bash scripts/install_llm.sh            # install (build once if needed)
#   LLAMA_CPP_VERSION=0.3.36 bash scripts/install_llm.sh
#
# GGML_NATIVE=OFF builds for a generic x86-64 CPU, so the cached wheel also runs on another
# machine of the same kind (a -march=native build can crash with an illegal instruction).
set -euo pipefail

VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
PY="${PYTHON:-python}"
CACHE="${AHJAX_CACHE:-$HOME/.cache/ahjax}/wheels"
mkdir -p "$CACHE"

if "$PY" -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.__version__ == '$VERSION' else 1)" 2>/dev/null; then
    echo "llama-cpp-python $VERSION already installed"
else
    wheel=$(ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$wheel" ]; then
        echo "building llama-cpp-python $VERSION from source into $CACHE (takes several minutes)..."
        CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" \
        CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
            "$PY" -m pip wheel --no-deps --no-binary llama-cpp-python \
            "llama-cpp-python==$VERSION" -w "$CACHE"
        wheel=$(ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl | head -n 1)
    fi
    echo "installing $wheel"
    "$PY" -m pip install "$wheel"
fi
# The server extra (pure Python; the list of llama-cpp-python's [server] extra) is what the
# OpenAI-compatible HTTP tests start.
"$PY" -m pip install "uvicorn>=0.22.0" "fastapi>=0.100.0" "pydantic-settings>=2.0.1" \
    "sse-starlette>=1.6.1" "starlette-context>=0.3.6,<0.4" "PyYAML>=5.1"
"$PY" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
