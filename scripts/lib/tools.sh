# shellcheck shell=bash
# Shared helpers for scripts/install-test-deps, scripts/validate-manifests, scripts/check-contracts
# and proto/python/generate. Sourced, not executed. Everything it installs lives in the tools dir,
# outside the source tree, so a clean clone stays clean and a second run reuses it.

TOOLS_DIR=${ENGARDE_TOOLS_DIR:-$HOME/.cache/engarde-tools}
TOOLS_BIN=$TOOLS_DIR/bin
export TOOLS_DIR TOOLS_BIN

# log PREFIX: one line per action, so CI output says what was (re)used or installed.
log() { printf '%s: %s\n' "${LOG_PREFIX:-$(basename "$0")}" "$*"; }
die() { log "error: $*" >&2; exit 1; }

# Run as root directly (CI and dev machines here are root); fall back to sudo elsewhere.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

# apt_install PKG...: installs only what is missing; 'apt-get update' at most once per process,
# and only when something actually has to be installed.
_APT_UPDATED=
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    if [[ -z $_APT_UPDATED ]]; then
        as_root apt-get update -qq
        _APT_UPDATED=1
    fi
    log "apt-get install ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# ensure_venv DIR: a Python venv at DIR (creating it if absent). Debian's python3 lacks the
# venv module until python3-venv is installed.
ensure_venv() {
    local dir=$1
    [[ -x $dir/bin/python ]] && return 0
    command -v python3 >/dev/null 2>&1 || apt_install python3
    python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
    log "creating venv $dir"
    python3 -m venv "$dir"
}

# The venv for small Python-packaged tools (pip download, kubernetes-validate).
TOOLS_VENV=$TOOLS_DIR/venv
export TOOLS_VENV

# The pinned Langflow the end-to-end tests run against, in a venv of its own.
LANGFLOW_VERSION=1.13.0
LANGFLOW_VENV=$TOOLS_DIR/langflow-$LANGFLOW_VERSION
export LANGFLOW_VERSION LANGFLOW_VENV

# The Python client's venv (proto/python): third-party packages only, pinned exactly by
# proto/python/requirements.txt, so that every checkout on the machine can share it. The client
# itself is never installed into it (an editable install would point one shared venv at one
# checkout): its users put proto/python/src on PYTHONPATH, or `pip install ./proto/python`.
# Rebuilt from scratch whenever the requirements file changes (its hash is kept in the venv).
PYTHON_CLIENT_VENV=${PYTHON_CLIENT_VENV:-$TOOLS_DIR/python-client}
export PYTHON_CLIENT_VENV

# ensure_python_client_venv REQUIREMENTS_FILE
ensure_python_client_venv() {
    local requirements=$1 stamp want
    want=$(sha256sum "$requirements" | cut -d' ' -f1)
    stamp=$PYTHON_CLIENT_VENV/.requirements.sha256
    if [[ -x $PYTHON_CLIENT_VENV/bin/python && -f $stamp && $(<"$stamp") == "$want" ]]; then
        log "Python client venv up to date at $PYTHON_CLIENT_VENV"
        return 0
    fi
    log "installing the Python client's pinned requirements into $PYTHON_CLIENT_VENV"
    rm -rf "$PYTHON_CLIENT_VENV"
    ensure_venv "$PYTHON_CLIENT_VENV"
    "$PYTHON_CLIENT_VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements"
    echo "$want" >"$stamp"
}

# buf (protobuf lint and breaking-change checks), pinned, from its npm package, which carries
# the binary for the platform.
BUF_VERSION=1.75.0
BUF_BIN=$TOOLS_DIR/buf-$BUF_VERSION/node_modules/.bin/buf
export BUF_VERSION BUF_BIN

# The release build of both services, together, as deploy/Dockerfile builds them: the symbol
# names in build/order/ (scripts/order-symbols) are those of this exact set of packages.
build_release_services() { cargo build --release -p workflow-service -p agent-service; }
