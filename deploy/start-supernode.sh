#!/usr/bin/env bash
# Start one Flower 1.39 SuperNode serving one FedMuscle user, over gRPC with TLS and its auth key.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
    cat <<USAGE
usage: deploy/start-supernode.sh --superlink HOST:PORT --ca FILE --key FILE --user ID [options]

Runs flower-supernode in the foreground (exec) with
  --grpc-rere --superlink HOST:PORT       the SuperLink's Fleet API (default port 9092)
  --root-certificates FILE                the CA certificate (ca.crt from make-certs.sh)
  --auth-supernode-private-key FILE       this node's private key (from make-node-keys.sh)
  --node-config 'user="ID" state-dir="DIR"'   the FedMuscle user this node serves

Options:
  --superlink HOST:PORT  SuperLink Fleet API address
  --ca FILE              CA certificate that signed the SuperLink certificate
  --key FILE             SuperNode private key; its FILE.pub must be registered on the SuperLink
  --user ID              user id in the run's federation file (run config 'federation')
  --state-dir DIR        client state (adapters, heads, optimiser) between rounds
                         (default: \$FEDMUSCLE_STATE_DIR or ~/.cache/fedmuscle/state)
  --data-dir DIR         where this node generates/caches its data (sets FEDMUSCLE_CACHE)
  --flwr-home DIR        this node's Flower home (installed app bundles; default \$FLWR_HOME)
  --port P               local Runtime API port; one per SuperNode on a host (default 9094)
  --node-config STR      more node-config pairs, appended as they are
  --warm                 keep one ClientApp process up between messages: the SuperNode runs with
                         --isolation process and deploy/warm_clientapp.py executes its tasks
                         (imports and the built model survive between rounds)
  --fast-poll S          cap the SuperNode's idle poll (3 s, hard-coded in Flower 1.39) at S
                         seconds through deploy/supernode_fast_poll.py
  --insecure             NO TLS and NO authentication (needs an --insecure SuperLink);
                         only when asked for, never a fallback
  --dry-run              print the command instead of running it
Anything after '--' is passed to flower-supernode as is.
USAGE
}

superlink="" ca="" key="" user="" state_dir="" data_dir="" home="" port="9094" more="" insecure=0 dry_run=0 warm=0 fast_poll="" extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --superlink) need_value "$1" "$#"; superlink="$2"; shift 2 ;;
        --ca) need_value "$1" "$#"; ca="$2"; shift 2 ;;
        --key) need_value "$1" "$#"; key="$2"; shift 2 ;;
        --user) need_value "$1" "$#"; user="$2"; shift 2 ;;
        --state-dir) need_value "$1" "$#"; state_dir="$2"; shift 2 ;;
        --data-dir) need_value "$1" "$#"; data_dir="$2"; shift 2 ;;
        --flwr-home) need_value "$1" "$#"; home="$2"; shift 2 ;;
        --port) need_value "$1" "$#"; port="$2"; shift 2 ;;
        --node-config) need_value "$1" "$#"; more="$2"; shift 2 ;;
        --warm) warm=1; shift ;;
        --fast-poll) need_value "$1" "$#"; fast_poll="$2"; shift 2 ;;
        --insecure) insecure=1; shift ;;
        --dry-run) dry_run=1; shift ;;
        --) shift; extra=("$@"); break ;;
        *) usage >&2; die "unknown argument $1" ;;
    esac
done
[[ -n "$superlink" ]] || { usage >&2; die "--superlink is required"; }
[[ -n "$user" ]] || { usage >&2; die "--user is required (the federation user this node serves)"; }
[[ "$user" =~ ^[A-Za-z0-9._-]+$ ]] || die "bad user id '$user'"

node_config="user=\"$user\""
if [[ -n "$state_dir" ]]; then
    private_dir "$state_dir"
    node_config+=" state-dir=\"$(realpath "$state_dir")\""
fi
[[ -z "$more" ]] || node_config+=" $more"
if [[ -n "$data_dir" ]]; then
    private_dir "$data_dir"
    export FEDMUSCLE_CACHE="$(realpath "$data_dir")"
fi
if [[ -n "$home" ]]; then
    mkdir -p "$home"
    export FLWR_HOME="$(realpath "$home")"
fi

python="$(dirname "$(flwr_bin flower-supernode)")/python"
if [[ -n "$fast_poll" ]]; then
    cmd=("$python" "$DEPLOY_DIR/supernode_fast_poll.py" "$fast_poll")
else
    cmd=("$(flwr_bin flower-supernode)")
fi
cmd+=(--grpc-rere --superlink "$superlink" --port "$port"
     --node-config "$node_config")
if [[ $insecure -eq 1 ]]; then
    [[ -z "$ca" && -z "$key" ]] || die "--insecure excludes --ca and --key"
    log "WARNING: insecure SuperNode (no TLS, no authentication), as asked with --insecure"
    cmd+=(--insecure)
else
    [[ -n "$ca" && -n "$key" ]] || { usage >&2; die "--ca and --key are required (or pass --insecure explicitly)"; }
    [[ -r "$ca" ]] || die "CA certificate $ca is missing"
    [[ -r "$key" ]] || die "private key $key is missing: run deploy/make-node-keys.sh"
    private_key "$key" "SuperNode private key"
    cmd+=(--root-certificates "$(realpath "$ca")" --auth-supernode-private-key "$(realpath "$key")")
fi
[[ $warm -eq 0 ]] || cmd+=(--isolation process)
cmd+=("${extra[@]}")
if [[ $dry_run -eq 1 ]]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
umask 077  # client state and data this node (and its warm worker) writes: owner-only
if [[ $warm -eq 1 ]]; then
    # The worker watches this shell's PID, which exec below hands to the SuperNode.
    "$python" "$DEPLOY_DIR/warm_clientapp.py" --runtime-api-address "127.0.0.1:$port" \
        --parent-pid $$ &
    log "warm ClientApp executor: pid $!"
fi
log "starting SuperNode for user $user: ${cmd[*]}"
exec "${cmd[@]}"
