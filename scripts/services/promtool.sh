#!/usr/bin/env bash
# promtool, the Prometheus rule and config checker, for the tests of deploy/prometheus/.
#
#   scripts/services/promtool.sh install   # installs Debian's `prometheus` package (2.42 on
#                                          # bookworm, ships /usr/bin/promtool) unless promtool
#                                          # is already on PATH; prints promtool's path
#   scripts/services/promtool.sh path      # prints promtool's path, exit 1 if missing
#
# Only the checker is wanted: no Prometheus server is started. Debian's package would start its
# service from the postinst; during the install a policy-rc.d that denies every start is in
# place (the one already there, or a temporary one this script removes again).
set -euo pipefail

log() { echo "promtool.sh: $*" >&2; }

promtool_bin() {
    if command -v promtool >/dev/null 2>&1; then
        command -v promtool
    elif [ -x /usr/bin/promtool ]; then
        echo /usr/bin/promtool
    else
        return 1
    fi
}

install() {
    if promtool_bin >/dev/null; then
        promtool_bin
        return 0
    fi
    log "promtool not found; installing Debian's prometheus package (the server is not started)"
    local policy=/usr/sbin/policy-rc.d made_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# temporary, from adflow scripts/services/promtool.sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    local rc=0
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } || rc=$?
    if [ -n "$made_policy" ]; then
        rm -f "$policy"
    fi
    [ "$rc" -eq 0 ] || { log "apt-get failed (exit $rc)"; return "$rc"; }
    promtool_bin
}

case "${1:-}" in
    install) install ;;
    path) promtool_bin ;;
    *)
        echo "usage: $0 install|path" >&2
        exit 2
        ;;
esac
