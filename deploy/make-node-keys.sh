#!/usr/bin/env bash
# Generate one SuperNode authentication key pair per name (ECDSA P-384, OpenSSH format).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
    cat <<USAGE
usage: deploy/make-node-keys.sh OUT_DIR NAME [NAME...] [--force]

For each NAME writes into OUT_DIR (created; never inside the repository):
  NAME      the SuperNode's private key: copy it to that node only
  NAME.pub  its public key: register it with 'deploy/register-nodes.sh'
NAME is usually the user id the node serves (for example convnext-cls).
USAGE
}

out="" force=0 names=()
parse_options usage --force:force=1 -- "$@"
out="${ARGS[0]:-}"
names=("${ARGS[@]:1}")
[[ -n "$out" && ${#names[@]} -gt 0 ]] || { usage >&2; die "OUT_DIR and at least one NAME are required"; }
command -v ssh-keygen >/dev/null || die "ssh-keygen is not installed (openssh-client)"
out="$(outside_repo "$out")"
mkdir -p "$out"
chmod 700 "$out"
for name in "${names[@]}"; do
    [[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || die "bad key name '$name' (letters, digits, . _ -)"
    if [[ -e "$out/$name" || -e "$out/$name.pub" ]]; then
        [[ $force -eq 1 ]] || die "$out/$name exists (use --force to overwrite)"
        rm -f "$out/$name" "$out/$name.pub"
    fi
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedmuscle-$name" -f "$out/$name"
    log "key pair $out/$name{,.pub}"
done
