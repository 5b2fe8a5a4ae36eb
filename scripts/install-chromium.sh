#!/usr/bin/env bash
# Installs Chromium (the Debian package chromium), which the status page's end-to-end test
# drives headless over the DevTools protocol (tests/it/page.rs), unless it is already on PATH.
# Root only. No recommends: the test needs the browser and its fonts' fallback, not a desktop.
set -euo pipefail
if command -v chromium > /dev/null; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-chromium: not root; install the chromium package yourself" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
# fonts-dejavu-core: some text in the screenshot (a bare container may have no font at all).
apt-get install -y --no-install-recommends chromium fonts-dejavu-core
