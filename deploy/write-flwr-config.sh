#!/usr/bin/env bash
# Write a SuperLink connection into $FLWR_HOME/config.toml for 'flwr run', 'flwr supernode ...'.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
    cat <<USAGE
usage: deploy/write-flwr-config.sh --address HOST:PORT (--ca FILE | --insecure) [--name NAME] [--no-default]

Adds (or replaces) [superlink.NAME] in \$FLWR_HOME/config.toml (FLWR_HOME defaults to ~/.flwr)
through Flower's own config writer, and makes it the default connection:
  address = "HOST:PORT"          the SuperLink's Control API (start-superlink.sh --host/--port; default :8000)
  root-certificates = "FILE"     the CA certificate (absolute path)
  insecure = true                only with --insecure
Then: flwr run . NAME --stream   (from the project directory)

Options:
  --address HOST:PORT   SuperLink Control API address (default port 8000)
  --ca FILE             CA certificate that signed the SuperLink certificate
  --name NAME           connection name (default: fedmuscle)
  --no-default          do not make it the default connection
  --insecure            plain HTTP, for an --insecure SuperLink only
USAGE
}

address="" ca="" name="fedmuscle" insecure=0 make_default=1
parse_options usage --address=address --ca=ca --name=name --no-default:make_default=0 \
    --insecure:insecure=1 -- "$@"
no_arguments usage no-extra
[[ -n "$address" ]] || { usage >&2; die "--address is required"; }
[[ "$name" =~ ^[A-Za-z0-9_-]+$ ]] || die "bad connection name '$name'"
if [[ $insecure -eq 1 ]]; then
    [[ -z "$ca" ]] || die "--insecure excludes --ca"
    log "WARNING: insecure connection '$name', as asked with --insecure"
else
    [[ -n "$ca" ]] || { usage >&2; die "--ca is required (or pass --insecure explicitly)"; }
    [[ -r "$ca" ]] || die "CA certificate $ca is missing"
    ca="$(realpath "$ca")"
fi

python="$(dirname "$(flwr_bin flwr)")/python"
[[ -x "$python" ]] || python="$(command -v python3)"
"$python" - "$name" "$address" "$ca" "$insecure" "$make_default" <<'PY'
import sys

from flwr.cli.flower_config import (
    read_flower_config,
    set_default_superlink_connection,
    write_superlink_connection,
)
from flwr.cli.typing import SuperLinkConnection

name, address, ca, insecure, make_default = sys.argv[1:]
connection = SuperLinkConnection(
    name=name,
    address=address,
    root_certificates=ca or None,
    insecure=insecure == "1",
)
write_superlink_connection(connection)
if make_default == "1":
    set_default_superlink_connection(name)
print(read_flower_config()[1])
PY
log "connection '$name' -> $address written"
