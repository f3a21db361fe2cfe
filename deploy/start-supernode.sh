#!/usr/bin/env bash
# Start one Flower 1.39 SuperNode serving one FedMuscle user, over gRPC with TLS and its auth key.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
    cat <<USAGE
usage: deploy/start-supernode.sh --superlink HOST:PORT --ca FILE --key FILE --user ID [options]

Runs flower-supernode in the foreground with
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
  --warm                 (the default) keep one ClientApp process up between messages: the
                         SuperNode runs with --isolation process and deploy/warm_clientapp.py
                         executes its tasks (imports and the built model survive between rounds;
                         a deployed round takes 1.3-1.7x a simulated one instead of about 10x)
  --cold                 Flower's own mode instead: a new flwr-clientapp process per message
  --fast-poll S          cap the SuperNode's idle poll (3 s, hard-coded in Flower 1.39) at S
                         seconds through deploy/supernode_fast_poll.py
  --activate-timeout S   keep retrying for S seconds (default 120) when the SuperLink refuses
                         to activate this node (Flower exit code 305): a node killed and restarted
                         at once is still counted online for up to 60 s after its last
                         heartbeat; 0 = no retry. An unregistered key is refused the same way
                         and gives up after S seconds.
  --insecure             NO TLS and NO authentication (needs an --insecure SuperLink);
                         only when asked for, never a fallback
  --dry-run              print the command instead of running it
Anything after '--' is passed to flower-supernode as is.

SIGTERM / SIGINT stop the SuperNode and its worker; whatever still runs FEDMUSCLE_STOP_GRACE
seconds later (default 10: a SuperNode blocked in a gRPC call handles signals late) is
killed, with its children.
USAGE
}

superlink="" ca="" key="" user="" state_dir="" data_dir="" home="" port="9094" more="" insecure=0 dry_run=0 warm=1 fast_poll="" activate_timeout=120 extra=()
parse_options usage --superlink=superlink --ca=ca --key=key --user=user --state-dir=state_dir \
    --data-dir=data_dir --flwr-home=home --port=port --node-config=more --warm:warm=1 \
    --cold:warm=0 --fast-poll=fast_poll --activate-timeout=activate_timeout \
    --insecure:insecure=1 --dry-run:dry_run=1 -- "$@"
no_arguments usage
extra=("${EXTRA[@]}")
[[ -n "$superlink" ]] || { usage >&2; die "--superlink is required"; }
[[ -n "$user" ]] || { usage >&2; die "--user is required (the federation user this node serves)"; }
[[ "$user" =~ ^[A-Za-z0-9._-]+$ ]] || die "bad user id '$user'"
[[ "$activate_timeout" =~ ^[0-9]+$ ]] || die "--activate-timeout takes whole seconds, not '$activate_timeout'"

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
STOP_GRACE=${FEDMUSCLE_STOP_GRACE:-10}  # seconds from SIGTERM to SIGKILL (stop_children)
[[ "$STOP_GRACE" =~ ^[0-9]+$ ]] || die "FEDMUSCLE_STOP_GRACE takes whole seconds, not '$STOP_GRACE'"
umask 077  # client state and data this node (and its warm worker) writes: owner-only
worker_pid="" node_pid=""
running() {  # is process $1 alive (an exited child not yet waited for is not)
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || { kill -0 "$1" 2>/dev/null; return; }
    stat="${stat##*) }"
    [[ "${stat%% *}" != Z ]]
}
children_of() {  # pids whose parent is one of "$@" (Linux /proc; none elsewhere)
    local stat rest
    for stat in /proc/[0-9]*/stat; do
        rest="$(cat "$stat" 2>/dev/null)" || continue
        rest="${rest##*) }"; rest="${rest#* }"  # after the state: the parent pid first
        [[ " $* " == *" ${rest%% *} "* ]] && { stat="${stat#/proc/}"; echo "${stat%/stat}"; }
    done
}
stop_children() {  # SIGTERM / SIGINT to this script: stop the SuperNode and the worker
    # A SuperNode blocked in a gRPC call (e.g. to a SuperLink that just restarted) handles
    # SIGTERM only when the call returns: after STOP_GRACE seconds it, its children and the
    # worker are killed, so stopping a node never hangs.
    trap - TERM INT
    local pids=($node_pid $worker_pid) pid alive deadline=$(( $(date +%s) + STOP_GRACE ))
    kill -TERM "${pids[@]}" 2>/dev/null || true
    while true; do
        alive=()
        for pid in "${pids[@]}"; do ! running "$pid" || alive+=("$pid"); done
        [[ ${#alive[@]} -gt 0 && $(date +%s) -lt $deadline ]] || break
        sleep 0.2
    done
    if [[ ${#alive[@]} -gt 0 ]]; then
        log "still running ${STOP_GRACE} s after SIGTERM: killing pid(s) ${alive[*]} and their children"
        kill -KILL $(children_of "${alive[@]}") "${alive[@]}" 2>/dev/null || true
    fi
    wait "${pids[@]}" 2>/dev/null || true
    exit 143
}
trap stop_children TERM INT
if [[ $warm -eq 1 ]]; then
    # The worker watches this shell, which lives as long as the SuperNode it (re)starts.
    "$python" "$DEPLOY_DIR/warm_clientapp.py" --runtime-api-address "127.0.0.1:$port" \
        --parent-pid $$ &
    worker_pid=$!
    log "warm ClientApp executor: pid $worker_pid"
fi
# Flower exits 1 and logs "Exit Code: 305 ... Failed to activate SuperNode" when the SuperLink
# refuses the node: each attempt's output is kept to tell that from other exits.
attempt_log="$(mktemp)"
trap 'rm -f "$attempt_log"' EXIT
give_up=$(( $(date +%s) + activate_timeout ))
while true; do
    log "starting SuperNode for user $user: ${cmd[*]}"
    : > "$attempt_log"
    "${cmd[@]}" > >(tee -a "$attempt_log") 2>&1 &
    node_pid=$!
    status=0
    wait "$node_pid" || status=$?
    node_pid=""
    sleep 0.5  # let tee write the last lines
    refused=0
    [[ $status -eq 0 ]] || ! grep -q "Failed to activate SuperNode" "$attempt_log" || refused=1
    left=$(( give_up - $(date +%s) ))
    if [[ $refused -eq 0 || $left -le 0 ]]; then
        if [[ $refused -eq 1 && $activate_timeout -gt 0 ]]; then
            log "the SuperLink still refuses this node after ${activate_timeout} s: is the key's .pub registered (deploy/register-nodes.sh)?"
        fi
        kill -TERM $worker_pid 2>/dev/null || true
        wait $worker_pid 2>/dev/null || true
        exit "$status"
    fi
    log "the SuperLink refused to activate this node (Flower exit code 305): it still counts the node online (up to 60 s after its last heartbeat), or the key is not registered; retrying in 5 s, giving up in ${left} s"
    sleep 5 & wait $! || true
done
