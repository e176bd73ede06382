#!/usr/bin/env bash
# Set up rcds on a fresh Debian machine: system packages, a virtualenv in .venv, rcds installed
# editable with its test tools. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: squid (tests run a real proxy), fuse3 (fusermount3: mounts as a user; rcds speaks
# the FUSE protocol itself, no libfuse binding), gcc (pip builds any dependency that has no wheel),
# attr (getfattr, used by the mount tests), openssl (format cross-checks),
# nginx (the sample web server configuration in front of a replica is tested),
# chromium and a font for it (the status page is tested in a headless browser),
# python3 (Debian's interpreter, readable by the unprivileged user of the rcds exec tests)
APT_PACKAGES=(squid fuse3 gcc attr openssl nginx chromium fonts-dejavu-core python3)
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # the packages start a system-wide squid and nginx; tests run their own on loopback ports
  for svc in squid nginx; do
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.rcds-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing rcds and its test tools into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test,mount]'
  touch "$stamp"
fi
echo "setup: ready (.venv/bin/rcds)"
