#!/usr/bin/env bash
# Headless Chromium for the dashboard test (crates/adflow-cli/tests/dashboard.rs) and the
# screenshots in docs/.
#
#   scripts/services/chromium.sh install   # installs Debian's `chromium` package unless a
#                                          # `chromium` is already on PATH; prints its path
#   scripts/services/chromium.sh path      # prints chromium's path, exit 1 if missing
#
# Nothing is started: the test runs `chromium --headless` itself.
set -euo pipefail

log() { echo "chromium.sh: $*" >&2; }

chromium_bin() {
    command -v chromium 2>/dev/null || { [ -x /usr/bin/chromium ] && echo /usr/bin/chromium; }
}

install() {
    if chromium_bin >/dev/null; then
        chromium_bin
        return 0
    fi
    log "chromium not found; installing Debian's chromium package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
    chromium_bin
}

case "${1:-}" in
    install) install ;;
    path) chromium_bin ;;
    *)
        echo "usage: $0 install|path" >&2
        exit 2
        ;;
esac
