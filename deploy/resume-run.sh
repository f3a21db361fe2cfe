#!/usr/bin/env bash
# Continue a stopped FedMuscle run (SuperLink restarted, ServerApp died) at its first unfinished round.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
    cat <<USAGE
usage: deploy/resume-run.sh [--connection NAME] [--app DIR] [--dry-run] RUN_DIR [-- FLWR_RUN_ARGS...]

Reads RUN_DIR/results.json (the run's results directory, <output-dir>/run-<id>/, written by the
ServerApp on the SuperLink's host after every round) and runs, with the run's own config:
  flwr run APP NAME --stream --run-config '<the run config of RUN_DIR> resume-from="RUN_DIR"'
The resumed ServerApp continues in RUN_DIR from its checkpoint.pt, and every SuperNode's user
from its saved state. Run it where RUN_DIR is readable at the same path as on the SuperLink's
host (there, or on a shared disk).

Options:
  --connection NAME  SuperLink connection in \$FLWR_HOME/config.toml (default: the default one)
  --app DIR          the FedMuscle app (default: this repository)
  --dry-run          print the command instead of running it
USAGE
}

connection="" app="$REPO_ROOT" dry_run=0 run_dir="" extra=()
parse_options usage --connection=connection --app=app --dry-run:dry_run=1 -- "$@"
[[ ${#ARGS[@]} -le 1 ]] || die "one RUN_DIR only (got ${ARGS[*]})"
run_dir="${ARGS[0]:-}"
extra=("${EXTRA[@]}")
[[ -n "$run_dir" ]] || { usage >&2; die "RUN_DIR is required (<output-dir>/run-<id>/)"; }
[[ -r "$run_dir/results.json" ]] || die "no results.json in $run_dir: give the run's results directory (<output-dir>/run-<id>/)"
[[ -r "$run_dir/checkpoint.pt" ]] || die "no checkpoint.pt in $run_dir: the run stopped before its first round ended; start it afresh"
flwr="$(flwr_bin flwr)"
run_config="$("$(dirname "$flwr")/python" -c '
import sys
from pathlib import Path
from fedmuscle_flwr.launch import toml_overrides
from fedmuscle_flwr.simulate import resume_overrides
print(toml_overrides(resume_overrides(Path(sys.argv[1]))))
' "$run_dir")" || die "cannot read the run config of $run_dir"
cmd=("$flwr" run "$app")
[[ -z "$connection" ]] || cmd+=("$connection")
cmd+=(--stream --run-config "$run_config" "${extra[@]}")
if [[ $dry_run -eq 1 ]]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
log "resuming $(realpath "$run_dir")"
exec "${cmd[@]}"
