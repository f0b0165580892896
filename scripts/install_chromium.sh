#!/usr/bin/env bash
# Make Debian's headless-capable `chromium` available (for the MLflow UI screenshot test).
# Idempotent: returns at once when it is installed. Exit 3 when it cannot be installed here
# (not root, no apt-get, no network); the caller skips with the reason printed.
set -euo pipefail
if command -v chromium >/dev/null; then command -v chromium; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "install_chromium.sh: chromium missing and not root" >&2; exit 3; }
command -v apt-get >/dev/null || { echo "install_chromium.sh: chromium missing and no apt-get" >&2; exit 3; }
export DEBIAN_FRONTEND=noninteractive
APT="apt-get -q -o DPkg::Lock::Timeout=300"
LOG=${TMPDIR:-/tmp}/install_chromium.log
if ! { $APT update && $APT install -y --no-install-recommends chromium fonts-dejavu-core; } >"$LOG" 2>&1; then
  echo "install_chromium.sh: apt-get failed: $(tail -1 "$LOG")" >&2; exit 3
fi
command -v chromium
