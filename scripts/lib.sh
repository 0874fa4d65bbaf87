# Shared helpers of the project's scripts (sourced, not run).

# Cargo builds go to one target directory under the user's cache, so every
# checkout on a machine (and CI's fresh clones) reuses the compiled llama.cpp.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/specdec/target}"

log() { printf '\033[1m[specdec]\033[0m %s\n' "$*" >&2; }

# Install Debian packages that are missing (idempotent; apt-get only runs when
# something is missing).
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# What building the backend needs: CMake and a C++ toolchain for llama.cpp,
# libclang for its bindings.
install_build_deps() {
    apt_install cmake clang libclang-dev g++ make pkg-config
}

# A Python virtual environment for the end-to-end tests (the official OpenAI
# client, pytest), kept under the user's cache and reused while the
# requirements file is unchanged.
python_test_env() {
    local venv="${XDG_CACHE_HOME:-$HOME/.cache}/specdec/venv"
    local requirements="tests/e2e/requirements.txt"
    local stamp="$venv/.requirements.sha256"
    local want
    want="$(sha256sum "$requirements" | cut -d' ' -f1)"
    if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        log "creating the Python test environment in $venv"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$requirements"
        echo "$want" > "$stamp"
    fi
    PYTHON_TEST_ENV="$venv"
}
