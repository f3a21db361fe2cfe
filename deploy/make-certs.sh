#!/usr/bin/env bash
# Generate a CA and the SuperLink's TLS certificate (signed by that CA).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
    cat <<USAGE
usage: deploy/make-certs.sh OUT_DIR [--san NAMES] [--days N] [--force]

Writes into OUT_DIR (created; never inside the repository):
  ca.crt      the CA certificate: give it to every SuperNode and every 'flwr' user
  ca.key      the CA private key: keep it offline
  server.pem  the SuperLink certificate (Fleet API gRPC + Control/Runtime HTTPS)
  server.key  the SuperLink private key: stays on the SuperLink host

--san NAMES   comma-separated host names and IP addresses the SuperLink is reached by
              (default: localhost,127.0.0.1,::1); add the SuperLink host's DNS name/IP
--days N      validity in days (default 365)
--force       overwrite existing files
USAGE
}

out="" sans="localhost,127.0.0.1,::1" days=365 force=0
parse_options usage --san=sans --days=days --force:force=1 -- "$@"
[[ ${#ARGS[@]} -le 1 ]] || die "one OUT_DIR only"
out="${ARGS[0]:-}"
[[ -n "$out" ]] || { usage >&2; die "OUT_DIR is required"; }
[[ "$days" =~ ^[0-9]+$ ]] || die "--days must be a whole number"
command -v openssl >/dev/null || die "openssl is not installed"
out="$(outside_repo "$out")"
mkdir -p "$out"
if [[ $force -eq 0 ]]; then
    for f in ca.crt ca.key server.pem server.key; do
        [[ ! -e "$out/$f" ]] || die "$out/$f exists (use --force to overwrite)"
    done
fi

san_list=""
IFS=',' read -r -a names <<<"$sans"
for name in "${names[@]}"; do
    name="${name// /}"
    [[ -n "$name" ]] || continue
    if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then
        entry="IP:$name"
    else
        entry="DNS:$name"
    fi
    san_list="${san_list:+$san_list,}$entry"
done
[[ -n "$san_list" ]] || die "--san names no host"
first="${names[0]// /}"

umask 077
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
openssl genrsa -out "$out/ca.key" 4096 2>/dev/null
openssl req -x509 -new -nodes -key "$out/ca.key" -sha256 -days "$days" \
    -subj "/O=FedMuscle/CN=FedMuscle deployment CA" -out "$out/ca.crt"
openssl genrsa -out "$out/server.key" 4096 2>/dev/null
openssl req -new -key "$out/server.key" -subj "/O=FedMuscle/CN=$first" -out "$tmp/server.csr"
cat >"$tmp/ext.cnf" <<CNF
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $san_list
CNF
openssl x509 -req -in "$tmp/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
    -CAcreateserial -out "$out/server.pem" -days "$days" -sha256 -extfile "$tmp/ext.cnf" 2>/dev/null
rm -f "$out/ca.srl"
chmod 644 "$out/ca.crt" "$out/server.pem"
openssl verify -CAfile "$out/ca.crt" "$out/server.pem" >/dev/null
log "certificates in $out (SAN: $san_list)"
