#!/usr/bin/env bash
# One command: a real Flower 1.39 deployment on loopback (TLS, SuperNode auth, gRPC Fleet API),
# one SuperNode process per FedMuscle user, 2 rounds through 'flwr run', results checked.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

# The whole script is one function, read by bash before it runs: editing this file while a
# demo runs cannot change what that demo executes.
main() {

usage() {
    cat <<USAGE
usage: deploy/local-demo.sh [--federation tiny|default|PATH] [--rounds N] [--workdir DIR] [--keep]
                            [--run-config 'key=value ...'] [--timeout S] [--warm | --cold] [--fast-poll S]
                            [--insecure]

Starts, as separate processes on 127.0.0.1 (free ports picked at run time):
  1 SuperLink (TLS, --enable-supernode-auth, SQLite database, gRPC-rere Fleet API)
  1 SuperNode per user of the federation (its own key, data dir, state dir, Flower home)
registers the nodes' keys, runs FedMuscle with 'flwr run <repo> <connection> --stream',
checks results.json (every user replied every round, payloads in round 2 on), and stops
every process it started (by process group, also on failure or Ctrl-C).

  --federation   tiny (tests/fixtures/federation_tiny.toml, 4 small users; default),
                 default (the 6-user default federation), or a federation TOML path
  --rounds N     server rounds (default 2)
  --workdir DIR  keep everything (certs, keys, logs, results) in DIR (default: a temp dir,
                 removed at the end unless --keep or a failure)
  --run-config   more run-config overrides (TOML pairs), appended last
  --timeout S    limit for 'flwr run' (default 900)
  --warm         (the default) SuperNodes with --isolation process and a warm ClientApp
                 executor each (deploy/warm_clientapp.py)
  --cold         Flower's own mode instead: a new flwr-clientapp process per message
  --fast-poll S  cap the SuperNodes' idle poll at S seconds (deploy/supernode_fast_poll.py)
  --insecure     no TLS, no auth (only when asked for explicitly)
Exit status: 0 when the run completed and results.json passed the checks.
USAGE
}

federation="tiny" rounds=2 workdir="" keep=0 more="" timeout_s=900 insecure=0 warm=1 fast_poll="" node_opts=()
parse_options usage --federation=federation --rounds=rounds --workdir=workdir \
    --keep:keep=1 --run-config=more --timeout=timeout_s --warm:warm=1 --cold:warm=0 \
    --fast-poll=fast_poll --insecure:insecure=1 -- "$@"
no_arguments usage no-extra
[[ $warm -eq 1 ]] || node_opts+=(--cold)
[[ -z "$fast_poll" ]] || node_opts+=(--fast-poll "$fast_poll")
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive whole number"
case "$federation" in
    tiny) federation="$REPO_ROOT/tests/fixtures/federation_tiny.toml" ;;
    default) ;;
    *) [[ -r "$federation" ]] || die "federation file $federation is missing"
       federation="$(realpath "$federation")" ;;
esac

flwr="$(flwr_bin flwr)"
python="$(dirname "$flwr")/python"
[[ -x "$python" ]] || die "no python next to $flwr"

if [[ -n "$workdir" ]]; then
    workdir="$(outside_repo "$workdir")"
    mkdir -p "$workdir"
    keep=1
else
    workdir="$(mktemp -d "${TMPDIR:-/tmp}/fedmuscle-deploy.XXXXXX")"
fi
logs="$workdir/logs"
mkdir -p "$logs"

# ---------------------------------------------------------------- cleanup, also on failure
pgids=()
homes=()
status=1
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ $status -eq 0 ]] || status=$(( rc == 0 ? 1 : rc ))
    if [[ ${#pgids[@]} -gt 0 ]]; then
        log "stopping ${#pgids[@]} process groups: ${pgids[*]}"
        for g in "${pgids[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
        for _ in $(seq 50); do  # up to 10 s for a clean exit (zombies do not count)
            alive="$(ps -eo pgid=,stat= | awk -v gs=" ${pgids[*]} " \
                'index(gs, " " $1 " ") && $2 !~ /^Z/ {n++} END {print n+0}')"
            [[ "$alive" -gt 0 ]] || break
            sleep 0.2
        done
        for g in "${pgids[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
    fi
    # Anything re-parented out of its group (e.g. a child that started its own session) still
    # carries its FLWR_HOME in its environment: stop those by PID too.
    if [[ ${#homes[@]} -gt 0 ]]; then
        (cd "$REPO_ROOT" && "$python" -c '
import sys
from pathlib import Path
from fedmuscle_flwr.launch import processes_using_home, stop_processes
for home in sys.argv[1:]:
    stop_processes(processes_using_home(Path(home)), grace=5.0)
' "${homes[@]}") || true
    fi
    if [[ $status -ne 0 ]]; then
        log "FAILED (status $status); logs kept in $logs"
        for f in "$logs"/*.log; do
            [[ -e "$f" ]] || continue
            echo "----- tail $f" >&2
            tail -n 15 "$f" >&2 || true
        done
    elif [[ $keep -eq 0 ]]; then
        rm -rf "$workdir"
    else
        log "kept $workdir"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_group NAME CMD...: run CMD in its own session (process group), log to logs/NAME.log;
# its PID (= its process group id) goes to $last_pid and the list of groups to stop.
last_pid=""
start_group() {
    local name="$1"; shift
    setsid "$@" >"$logs/$name.log" 2>&1 < /dev/null &
    last_pid=$!
    pgids+=("$last_pid")
}

free_ports() {  # free_ports N: N distinct free TCP ports on 127.0.0.1
    "$python" - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
}

wait_for_log() {  # wait_for_log FILE PATTERN SECONDS PID
    local file="$1" pattern="$2" limit="$3" pid="$4"
    for _ in $(seq $(( limit * 5 ))); do
        grep -q -- "$pattern" "$file" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || die "process $pid exited before '$pattern' (see $file)"
        sleep 0.2
    done
    die "no '$pattern' in $file after ${limit}s"
}

# ---------------------------------------------------------------- the federation's users
mapfile -t users < <(cd "$REPO_ROOT" && "$python" -c '
import sys
from fedmuscle_flwr.federation import load_federation
for u in load_federation(sys.argv[1]).users:
    print(u.id)
' "$federation")
[[ ${#users[@]} -ge 3 ]] || die "the federation has ${#users[@]} users; the demo needs at least 3"
log "federation $federation: ${#users[@]} users (${users[*]})"
read -r -a ports <<<"$(free_ports $(( 2 + ${#users[@]} )))"
fleet_port="${ports[0]}" control_port="${ports[1]}"

# ---------------------------------------------------------------- certificates and keys
secure=()
if [[ $insecure -eq 1 ]]; then
    log "WARNING: --insecure: no TLS, no SuperNode authentication"
else
    log "1/6 certificates and SuperNode keys in $workdir"
    "$DEPLOY_DIR/make-certs.sh" "$workdir/certs" 2>>"$logs/setup.log"
    "$DEPLOY_DIR/make-node-keys.sh" "$workdir/keys" "${users[@]}" 2>>"$logs/setup.log"
fi

# ---------------------------------------------------------------- SuperLink
log "2/6 SuperLink: Fleet API (gRPC) 127.0.0.1:$fleet_port, Control API 127.0.0.1:$control_port"
link_home="$workdir/superlink/flwr-home"
mkdir -p "$link_home"
homes+=("$link_home")
if [[ $insecure -eq 1 ]]; then secure=(--insecure); else secure=(--certs "$workdir/certs"); fi
FLWR_HOME="$link_home" start_group superlink "$DEPLOY_DIR/start-superlink.sh" \
    "${secure[@]}" --database "$workdir/superlink/state.db" \
    --fleet-address "127.0.0.1:$fleet_port" --host 127.0.0.1 --port "$control_port"
link_pid="$last_pid"
wait_for_log "$logs/superlink.log" "Starting Fleet API" 60 "$link_pid"
wait_for_log "$logs/superlink.log" "Uvicorn running on" 60 "$link_pid"

# ---------------------------------------------------------------- flwr config + registration
cli_home="$workdir/cli/flwr-home"
mkdir -p "$cli_home"
homes+=("$cli_home")
export FLWR_HOME="$cli_home"
if [[ $insecure -eq 1 ]]; then
    "$DEPLOY_DIR/write-flwr-config.sh" --name demo --address "127.0.0.1:$control_port" --insecure >/dev/null 2>>"$logs/setup.log"
else
    "$DEPLOY_DIR/write-flwr-config.sh" --name demo --address "127.0.0.1:$control_port" \
        --ca "$workdir/certs/ca.crt" >/dev/null 2>>"$logs/setup.log"
    log "3/6 registering ${#users[@]} SuperNode keys"
    pubs=()
    for u in "${users[@]}"; do pubs+=("$workdir/keys/$u.pub"); done
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        if "$DEPLOY_DIR/register-nodes.sh" --connection demo "${pubs[@]}" \
            >"$workdir/registered.txt" 2>>"$logs/setup.log"; then
            break
        fi
        [[ $attempt -lt 10 ]] || die "registration failed (see $logs/setup.log)"
        sleep 1
    done
    sed 's/^/    registered /' "$workdir/registered.txt" >&2
fi

# ---------------------------------------------------------------- SuperNodes
log "4/6 starting ${#users[@]} SuperNodes"
i=2
node_pids=()
for u in "${users[@]}"; do
    node_dir="$workdir/nodes/$u"
    mkdir -p "$node_dir"
    homes+=("$node_dir/flwr-home")
    if [[ $insecure -eq 1 ]]; then
        auth=(--insecure)
    else
        auth=(--ca "$workdir/certs/ca.crt" --key "$workdir/keys/$u")
    fi
    start_group "node-$u" "$DEPLOY_DIR/start-supernode.sh" \
        --superlink "127.0.0.1:$fleet_port" "${auth[@]}" --user "$u" \
        --state-dir "$node_dir/state" --data-dir "$node_dir/data" \
        --flwr-home "$node_dir/flwr-home" --port "${ports[$i]}" "${node_opts[@]}"
    node_pids+=("$last_pid")
    log "    SuperNode $u: pid $last_pid, Runtime API 127.0.0.1:${ports[$i]}"
    i=$(( i + 1 ))
done
i=0
for u in "${users[@]}"; do
    wait_for_log "$logs/node-$u.log" "SuperNode ID" 60 "${node_pids[$i]}"
    i=$(( i + 1 ))
done
log "    all ${#users[@]} SuperNodes connected and authenticated"

# ---------------------------------------------------------------- flwr run
out="$workdir/out"
run_config="num-server-rounds=$rounds federation=\"$federation\" public-size=64 public-batch-size=8"
run_config+=" embed-dim=16 num-partners=2 local-steps=2 batch-size=8 min-nodes=${#users[@]}"
run_config+=" quorum=2 node-wait-timeout=120.0 round-timeout=300.0 output-dir=\"$out\""
extra_config=()
[[ -z "$more" ]] || extra_config=(--run-config "$more")  # a later --run-config wins
log "5/6 flwr run $REPO_ROOT demo --stream --run-config '$run_config' ${extra_config[*]}"
started=$(date +%s)
set +e
timeout --kill-after=10 "$timeout_s" "$flwr" run "$REPO_ROOT" demo --stream --run-config "$run_config" "${extra_config[@]}" \
    2>&1 | tee "$logs/flwr-run.log" | grep --line-buffered -E "round [0-9]+/|results:|ERROR" >&2
pipe=("${PIPESTATUS[@]}")
set -e
rc=${pipe[0]}
[[ $rc -eq 0 ]] || die "flwr run exited with $rc (see $logs/flwr-run.log)"
log "flwr run finished in $(( $(date +%s) - started )) s"

# ---------------------------------------------------------------- results
log "6/6 checking results.json"
"$python" - "$out" "$rounds" "${users[@]}" <<'PY'
import json, sys
from pathlib import Path

out, rounds, users = Path(sys.argv[1]), int(sys.argv[2]), set(sys.argv[3:])
found = sorted(out.glob("run-*/results.json"))
if not found:
    sys.exit(f"no results.json under {out}")
res = json.loads(found[-1].read_text())
problems = []
if [r["round"] for r in res["rounds"]] != list(range(1, rounds + 1)):
    problems.append(f"rounds {[r['round'] for r in res['rounds']]} != 1..{rounds}")
for r in res["rounds"]:
    if set(r["replied"]) != users or r["failed"]:
        problems.append(f"round {r['round']}: replied {sorted(r['replied'])}, failed {r['failed']}")
    if r["round"] >= 2 and not all(v > 0 for v in r["downlink_bytes"].values()):
        problems.append(f"round {r['round']}: a user got no payload")
for r in res["rounds"]:
    print(f"    round {r['round']}: {len(r['replied'])}/{len(users)} replied, "
          f"{r['seconds']:.1f} s, down {sum(r['downlink_bytes'].values())} B", file=sys.stderr)
if problems:
    sys.exit("results.json check failed:\n  " + "\n  ".join(problems))
print(found[-1])
PY
status=0
log "OK: ${#users[@]} SuperNodes, $rounds rounds, results checked"
}

main "$@"
