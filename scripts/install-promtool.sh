#!/usr/bin/env bash
# Installs promtool, which the metrics tests run on the endpoint's output and on the Grafana
# dashboard's expressions (tests/it/metrics.rs), unless it is already on PATH. Root only.
# promtool comes with the Debian package prometheus, which also brings the Prometheus server and
# its service: a policy-rc.d that refuses (exit 101) keeps the package's scripts from starting
# that service during the install (the tests never use it).
set -euo pipefail
if command -v promtool > /dev/null; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-promtool: not root; install the prometheus package (promtool) yourself" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
apt-get update
apt-get install -y --no-install-recommends prometheus
