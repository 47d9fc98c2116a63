#!/usr/bin/env bash
# quicksilver-kv root vs etcd (Debian `etcd-server`, one node, its JSON gateway), same machine,
# loopback, same load through each one's network API: single-key durable writes and reads, with
# ApacheBench (keep-alive, $CONCURRENCY connections). Prints both figures and the ratio.
#
#   benches/compare-etcd.sh                      # builds target/release/edgekit if missing
#   EDGEKIT=target/debug/edgekit REQUESTS=5000 benches/compare-etcd.sh
#
# Both sides fsync before acknowledging (etcd's WAL; our group commit, the default durability).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-20000}
CONCURRENCY=${CONCURRENCY:-64}
ETCD_HOST=${ETCD_HOST:-127.0.0.77}
EDGEKIT=${EDGEKIT:-target/release/edgekit}

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v ab >/dev/null || need+=(apache2-utils)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "error: install ${need[*]} (sudo apt-get install ${need[*]})" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The package starts its own etcd on install; ours runs on a private address and data dir.
if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
    systemctl stop etcd || true
fi
if [[ ! -x $EDGEKIT ]]; then
    cargo build --release -p edgekit
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# --- etcd -------------------------------------------------------------------------------------
etcd_url="http://$ETCD_HOST:23790"
etcd --name bench --data-dir "$work/etcd" \
    --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
    --listen-peer-urls "http://$ETCD_HOST:23800" \
    --initial-advertise-peer-urls "http://$ETCD_HOST:23800" \
    --initial-cluster "bench=http://$ETCD_HOST:23800" \
    --log-level error >"$work/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    curl -fs "$etcd_url/health" 2>/dev/null | grep -q '"health":"true"' && break
    sleep 0.1
done
curl -fs "$etcd_url/health" | grep -q '"health":"true"' || { cat "$work/etcd.log"; exit 1; }

# --- quicksilver-kv root ----------------------------------------------------------------------
"$EDGEKIT" kv serve --data "$work/kv" --api 127.0.0.1:0 2>"$work/kv.log" &
pids+=($!)
kv_addr=
for _ in $(seq 100); do
    kv_addr=$(sed -n 's/^listening on //p' "$work/kv.log" | head -1)
    [[ -n $kv_addr ]] && break
    sleep 0.1
done
[[ -n $kv_addr ]] || { cat "$work/kv.log"; exit 1; }
kv_url="http://$kv_addr"

# --- the same payloads ------------------------------------------------------------------------
value=$(head -c 64 /dev/zero | tr '\0' 'v')
printf '%s' "$value" >"$work/value.bin"
key_b64=$(printf 'bench/key' | base64 -w0)
printf '{"key":"%s","value":"%s"}' "$key_b64" "$(printf '%s' "$value" | base64 -w0)" >"$work/put.json"
printf '{"key":"%s"}' "$key_b64" >"$work/range.json"

# Run ab, fail loudly on any failed or non-2xx request, print requests/s.
rate() {
    local out
    out=$(ab -q -k -n "$REQUESTS" -c "$CONCURRENCY" "$@" 2>&1) || { echo "$out" >&2; exit 1; }
    # ab counts answers whose length differs from the first as "Length" failures; both APIs
    # answer with the new revision/sequence, so only connection errors and non-2xx count.
    if grep -q -E '(Connect|Receive|Exceptions): [1-9]|^Non-2xx responses' <<<"$out"; then
        echo "$out" >&2
        exit 1
    fi
    awk '/^Requests per second:/ {print $4}' <<<"$out"
}

etcd_put=$(rate -p "$work/put.json" -T application/json "$etcd_url/v3/kv/put")
kv_put=$(rate -u "$work/value.bin" -T application/octet-stream "$kv_url/v1/kv/bench/key")
# How many writes each group commit (one transaction, one round of syncs) carried.
kv_metrics=$(curl -fs "$kv_url/metrics")
kv_batches=$(awk '/^quicksilver_kv_batches_total / {print $2}' <<<"$kv_metrics")
kv_groups=$(awk '/^quicksilver_kv_group_commits_total / {print $2}' <<<"$kv_metrics")
etcd_get=$(rate -p "$work/range.json" -T application/json "$etcd_url/v3/kv/range")
kv_get=$(rate "$kv_url/v1/kv/bench/key")

echo "load: $REQUESTS requests, $CONCURRENCY keep-alive connections, 64-byte values, loopback"
echo "edgekit binary: $EDGEKIT"
printf '%-34s %12s %12s %8s\n' "" "etcd req/s" "kv req/s" "ratio"
printf '%-34s %12.0f %12.0f %7.2fx\n' "durable writes (PUT one key)" "$etcd_put" "$kv_put" \
    "$(awk -v a="$kv_put" -v b="$etcd_put" 'BEGIN {print a / b}')"
echo "kv group commit: $kv_batches writes in $kv_groups transactions"
printf '%-34s %12.0f %12.0f %7.2fx\n' "reads (GET one key)" "$etcd_get" "$kv_get" \
    "$(awk -v a="$kv_get" -v b="$etcd_get" 'BEGIN {print a / b}')"
