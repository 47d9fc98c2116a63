#!/usr/bin/env bash
# Run every test edgekit has. This is the README's test command and what .ci/run calls.
#
# Some tests drive real peers from Debian (authoritative DNS servers, Unbound); those packages are
# listed in scripts/test-packages.txt. As root, missing ones are installed; otherwise this stops and
# names them, because a test that skips itself when its peer is absent proves nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t packages < <(grep -v '^\s*#' scripts/test-packages.txt | grep -v '^\s*$' || true)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "==> installing test packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        # Without systemd, a package's init script may have started its daemon on port 53; the
        # tests bind 127.0.53.x:53 themselves, so stop what this install just started.
        for daemon in nsd unbound knotd; do pkill -x "$daemon" 2>/dev/null || true; done
    else
        echo "error: the tests need these Debian packages: ${missing[*]}" >&2
        echo "       install them (sudo apt-get install ${missing[*]}) and run again" >&2
        exit 1
    fi
fi

# Peers installed from Debian start their own services on install; the tests start their own
# instances on loopback with private configs, so stop any that the package started.
for svc in nsd knot unbound redis-server etcd; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
        systemctl stop "$svc" || true
    fi
done

echo "==> cargo test --workspace"
cargo test --workspace --locked "$@"
