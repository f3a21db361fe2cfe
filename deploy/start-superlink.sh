#!/usr/bin/env bash
# Start the Flower 1.39 SuperLink: TLS, SuperNode authentication, a database, gRPC Fleet API.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
    cat <<USAGE
usage: deploy/start-superlink.sh --certs DIR --database FILE [options] [-- EXTRA FLAGS]

Runs flower-superlink in the foreground (exec), with
  --fleet-api-type grpc-rere   SuperNodes connect over gRPC (default port 9092)
  --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile   DIR/ca.crt, DIR/server.pem, DIR/server.key
  --enable-supernode-auth      only registered SuperNode keys may connect
  --database FILE              SQLite state: a restarted SuperLink keeps nodes and runs
  --disable-runtime-dependency-installation   no 'uv sync': the installed environment runs

Options:
  --certs DIR            directory made by deploy/make-certs.sh
  --database FILE        SQLite file (created if missing)
  --fleet-address H:P    Fleet API (SuperNodes connect here; default 0.0.0.0:9092)
  --host H               Control + Runtime HTTPS API host ('flwr' connects here; default 127.0.0.1;
                         use 0.0.0.0 to accept 'flwr run' from other machines)
  --port P               Control + Runtime HTTPS API port (default 8000)
  --log-file FILE        also write the log to FILE (rotated by Flower)
  --insecure             NO TLS and NO SuperNode authentication: only for trusted networks
                         and only when asked for; never used as a fallback
  --dry-run              print the command instead of running it
Anything after '--' is passed to flower-superlink as is.
USAGE
}

certs="" database="" fleet="0.0.0.0:9092" host="127.0.0.1" port="8000" logfile="" insecure=0 dry_run=0 extra=()
parse_options usage --certs=certs --database=database --fleet-address=fleet --host=host \
    --port=port --log-file=logfile --insecure:insecure=1 --dry-run:dry_run=1 -- "$@"
no_arguments usage
extra=("${EXTRA[@]}")
[[ -n "$database" ]] || { usage >&2; die "--database is required (a restartable SuperLink keeps its state there)"; }
private_dir "$(dirname "$database")"

cmd=("$(flwr_bin flower-superlink)"
     --fleet-api-type grpc-rere
     --fleet-api-address "$fleet"
     --host "$host" --port "$port"
     --database "$database"
     --disable-runtime-dependency-installation)
if [[ $insecure -eq 1 ]]; then
    [[ -z "$certs" ]] || die "--insecure and --certs exclude each other"
    log "WARNING: insecure SuperLink (no TLS, no SuperNode authentication), as asked with --insecure"
    cmd+=(--insecure)
else
    [[ -n "$certs" ]] || { usage >&2; die "--certs is required (or pass --insecure explicitly)"; }
    for f in ca.crt server.pem server.key; do
        [[ -r "$certs/$f" ]] || die "$certs/$f is missing: run deploy/make-certs.sh $certs"
    done
    private_key "$certs/server.key" "SuperLink private key"
    certs="$(realpath "$certs")"
    cmd+=(--ssl-ca-certfile "$certs/ca.crt" --ssl-certfile "$certs/server.pem"
          --ssl-keyfile "$certs/server.key" --enable-supernode-auth)
fi
[[ -z "$logfile" ]] || cmd+=(--log-file "$logfile")
cmd+=("${extra[@]}")
if [[ $dry_run -eq 1 ]]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
log "starting: ${cmd[*]}"
umask 077  # the database (and its -wal/-shm files) and logs Flower creates: owner-only
exec "${cmd[@]}"
