#!/usr/bin/env bash
# CI's test of the .deb (root only, as it installs it): build it (scripts/build-deb.sh, profile
# deb-test unless TICKD_DEB_PROFILE says otherwise), install it with dpkg -i, check what it put
# where with the installed binary, and purge it again, whatever happened.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "test-deb: not root: dpkg -i needs root" >&2
    exit 1
fi
if dpkg-query -W -f='${Status}' tickd 2> /dev/null | grep -q installed; then
    echo "test-deb: a tickd package is installed already; not touching it" >&2
    exit 1
fi

deb="$(bash scripts/build-deb.sh "${TICKD_DEB_PROFILE:-deb-test}" | tail -n 1)"
echo "test-deb: $deb"
test -f "$deb"

trap 'dpkg --purge tickd > /dev/null' EXIT
# No systemd as PID 1 in a container: the maintainer scripts skip starting the service.
dpkg -i "$deb"

/usr/bin/tickd check /etc/tickd/jobs.toml
dpkg-query -W -f='${Conffiles}\n' tickd | grep -q '/etc/tickd/jobs.toml'
test -f /usr/share/man/man1/tickd.1.gz
test -f /usr/share/man/man1/tickd-run.1.gz
test -s /usr/share/bash-completion/completions/tickd
bash -n /usr/share/bash-completion/completions/tickd
test -s /usr/share/zsh/vendor-completions/_tickd
test -s /usr/share/fish/vendor_completions.d/tickd.fish
/usr/bin/tickd schema | cmp - /usr/share/tickd/jobs.schema.json
unit=/usr/lib/systemd/system/tickd.service
# Enabled by the generated postinst (deb-systemd-helper works without a running systemd).
wants=/etc/systemd/system/multi-user.target.wants/tickd.service
test -L "$wants"
grep -q '^ExecStart=/usr/bin/tickd run /etc/tickd/jobs.toml$' "$unit"
if command -v systemd-analyze > /dev/null; then
    # Now ExecStart's binary and the man page exist: the installed unit must verify as is
    # (what it says about other units of this machine is not ours).
    man=yes
    command -v man > /dev/null || man=no
    out="$(systemd-analyze verify --man="$man" "$unit" 2>&1 | grep tickd || true)"
    if [ -n "$out" ]; then
        echo "$out" >&2
        exit 1
    fi
fi

dpkg --purge tickd
trap - EXIT
if [ -e /usr/bin/tickd ] || [ -e /etc/tickd/jobs.toml ] || [ -L "$wants" ]; then
    echo "test-deb: dpkg --purge left files behind" >&2
    exit 1
fi
echo "test-deb: OK"
