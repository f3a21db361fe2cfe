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

# parse_options USAGE_FN SPEC... -- "$@": every script's option parsing, in one place.
#   SPEC "--name=VAR"        the option takes a value, stored in VAR
#   SPEC "--name:VAR=VALUE"  a switch: sets VAR to VALUE
# -h/--help prints USAGE_FN and exits 0; an unknown option is refused with the usage.
# Sets ARGS (the positional arguments) and EXTRA (everything after a bare "--").
parse_options() {
    local usage_fn="$1" spec
    shift
    local -A takes=() switches=()
    while [[ $# -gt 0 && "$1" != "--" ]]; do
        spec="$1"
        shift
        if [[ "$spec" == *:*=* ]]; then
            switches["${spec%%:*}"]="${spec#*:}"
        else
            takes["${spec%%=*}"]="${spec#*=}"
        fi
    done
    [[ $# -gt 0 ]] && shift
    ARGS=() EXTRA=()
    while [[ $# -gt 0 ]]; do
        case "$1" in
            -h|--help) "$usage_fn"; exit 0 ;;
            --) shift; EXTRA=("$@"); break ;;
        esac
        if [[ "$1" != -* ]]; then
            ARGS+=("$1")
            shift
        elif [[ -n "${takes[$1]+set}" ]]; then
            need_value "$1" "$#"
            printf -v "${takes[$1]}" '%s' "$2"
            shift 2
        elif [[ -n "${switches[$1]+set}" ]]; then
            printf -v "${switches[$1]%%=*}" '%s' "${switches[$1]#*=}"
            shift
        else
            "$usage_fn" >&2
            die "unknown option $1"
        fi
    done
}

# no_arguments: refuse positional arguments (and, with "no-extra", anything after "--").
no_arguments() {  # no_arguments USAGE_FN [no-extra]
    if [[ ${#ARGS[@]} -gt 0 ]]; then "$1" >&2; die "unknown argument ${ARGS[0]}"; fi
    if [[ "${2:-}" == no-extra && ${#EXTRA[@]} -gt 0 ]]; then
        "$1" >&2
        die "unexpected arguments after --: ${EXTRA[*]}"
    fi
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
