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
