#!/usr/bin/env bash
# Register SuperNode public keys with a SuperLink that runs --enable-supernode-auth.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
    cat <<USAGE
usage: deploy/register-nodes.sh [--connection NAME] KEY.pub [KEY.pub...]

For each public key runs Flower 1.39's
  flwr supernode register KEY.pub NAME --name <key file name without .pub>
against the SuperLink's Control API named by connection NAME in \$FLWR_HOME/config.toml
(deploy/write-flwr-config.sh writes it; default: the default connection). Prints
'<name> <node id>' per key, then the SuperLink's list. Only registered keys can connect.
USAGE
}

connection="" keys=()
parse_options usage --connection=connection -- "$@"
keys=("${ARGS[@]}")
[[ ${#keys[@]} -gt 0 ]] || { usage >&2; die "at least one public key is required"; }
flwr="$(flwr_bin flwr)"
conn=()
[[ -z "$connection" ]] || conn=("$connection")
for key in "${keys[@]}"; do
    [[ "$key" == *.pub ]] || die "$key: give the public key (KEY.pub), never the private key"
    [[ -r "$key" ]] || die "$key is missing"
    name="$(basename "$key" .pub)"
    out="$("$flwr" supernode register "$key" "${conn[@]}" --name "$name" --format json)" \
        || die "registering $key failed: $out"
    node_id="$(printf '%s' "$out" | "$(dirname "$flwr")/python" -c \
        'import json,sys; d=json.load(sys.stdin); print(d.get("node-id", d))' 2>/dev/null || echo "$out")"
    echo "$name $node_id"
done
"$flwr" supernode list "${conn[@]}" >&2 || true
