#!/usr/bin/env bash
# Installs systemd-analyze, which tests/it/install.rs runs on contrib/systemd/tickd.service
# (`verify`, and `security` for its exposure score), unless it is already on PATH. Root only.
# It comes with the Debian package systemd; nothing is started (in a container systemd is not
# PID 1, and the tests only analyze files).
set -euo pipefail
if command -v systemd-analyze > /dev/null; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-systemd-analyze: not root; install the systemd package yourself" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends systemd
