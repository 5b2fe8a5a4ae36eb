#!/usr/bin/env bash
# Installs the Debian PostgreSQL server packages the cluster tests need (tests/it/postgres.rs
# starts throw-away servers from their binaries), unless a server is already installed. Root only.
# The package's own default cluster is not wanted (the tests never use it, and it would take port
# 5432), so postgresql-common goes first, told not to create one.
set -euo pipefail
if compgen -G '/usr/lib/postgresql/*/bin/initdb' > /dev/null; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-postgres: not root; install the postgresql package yourself" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends postgresql-common
sed -ri 's/^#?\s*(create_main_cluster)\s*=.*$/\1 = false/' /etc/postgresql-common/createcluster.conf
apt-get install -y --no-install-recommends postgresql
