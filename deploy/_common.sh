# Shared helpers for the deploy/ scripts (sourced, not run).
# shellcheck shell=bash

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$DEPLOY_DIR/.." && pwd)"

die() {
    echo "error: $*" >&2
    exit 2
}

log() {
    echo "[$(date +%H:%M:%S)] $*" >&2
}

# The Flower commands: $FLWR_BIN_DIR, else the repo's .venv/bin, else $PATH.
flwr_bin() {
    local name="$1"
    if [[ -n "${FLWR_BIN_DIR:-}" && -x "$FLWR_BIN_DIR/$name" ]]; then
        echo "$FLWR_BIN_DIR/$name"
    elif [[ -x "$REPO_ROOT/.venv/bin/$name" ]]; then
        echo "$REPO_ROOT/.venv/bin/$name"
    elif command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
    else
        die "'$name' not found: run scripts/setup.sh, or set FLWR_BIN_DIR to the bin/ holding Flower 1.39"
    fi
}

# Refuse a directory inside the repository (keys and certificates never go there).
outside_repo() {
    local dir
    dir="$(realpath -m "$1")"
    if [[ "$dir" == "$REPO_ROOT" || "$dir" == "$REPO_ROOT"/* ]]; then
        die "$1 is inside the repository ($REPO_ROOT): keep keys and certificates elsewhere"
    fi
    echo "$dir"
}

# Refuse a private key that anyone but its owner can read: a key others can read is a key
# others may hold. Only the path is ever printed, never the key.
private_key() {  # private_key FILE WHAT
    local file="$1" what="$2" mode
    [[ -r "$file" ]] || die "$what $file is missing"
    mode="$(stat -L -c %a "$file" 2>/dev/null || stat -L -f %Lp "$file")"
    if (( (8#$mode & 8#077) != 0 )); then
        die "$what $file is readable by group or others (mode $mode): run 'chmod 600 $file'"
    fi
}

# Create a directory that holds private state (client state, data, the SuperLink database)
# owner-only (0700); an existing directory is left as it is.
private_dir() {  # private_dir DIR
    [[ -d "$1" ]] || mkdir -p -m 700 "$1"
}

need_value() {  # need_value OPTION "$#"
    [[ "$2" -ge 2 ]] || die "$1 needs a value"
}

# Flower starts its helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name from
# $PATH: put the directory of the Flower commands first.
_bin="$(dirname "$(flwr_bin flower-superlink)")"
case ":$PATH:" in *":$_bin:"*) ;; *) export PATH="$_bin:$PATH" ;; esac
unset _bin

# Quiet, offline, reproducible Flower defaults for every process these scripts start.
export FLWR_TELEMETRY_ENABLED="${FLWR_TELEMETRY_ENABLED:-0}"
export FLWR_DISABLE_UPDATE_CHECK="${FLWR_DISABLE_UPDATE_CHECK:-1}"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="${FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION:-1}"
