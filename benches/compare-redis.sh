#!/usr/bin/env bash
# edgekit counter node (HTTP increments) vs Redis INCR (Debian `redis-server`), same machine,
# loopback, unpipelined, the same number of client connections. Prints both figures and ratios.
#
#   benches/compare-redis.sh                    # builds target/release/edgekit if missing
#   CONNECTIONS=50 DURATION=10 EDGEKIT=target/release/edgekit benches/compare-redis.sh
#
# Three figures for edgekit, each with what it guarantees when the answer arrives:
#   fsync        `edgekit counters serve` (default): journalled AND fsynced (group commit) before
#                the answer; nothing acknowledged is ever lost, even on power loss.
#   fsync-every  `--fsync-every 1s`: journalled (survives kill -9) and applied, fsynced every
#                second; a power loss may lose the last second. Comparable to Redis below.
# Redis runs with `appendonly yes, appendfsync everysec` (the AOF's recommended durable setting:
# written before the reply, fsynced every second). Redis's packaged default (RDB snapshots only)
# is weaker still and no faster for INCR.
# Load: redis-benchmark -t incr (one key, unpipelined) vs wrk POST /v1/counters/bench/incr (one
# key, keep-alive), both with $CONNECTIONS connections. Client and server share the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-50}
SECONDS_PER_RUN=${DURATION:-10}
REQUESTS=${REQUESTS:-300000}
REDIS_HOST=${REDIS_HOST:-127.0.0.78}
REDIS_PORT=${REDIS_PORT:-16379}
EDGEKIT=${EDGEKIT:-target/release/edgekit}

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
command -v wrk >/dev/null || need+=(wrk)
if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "error: install ${need[*]} (sudo apt-get install ${need[*]})" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
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

# --- Redis on a private address, port and directory ---------------------------------------------
mkdir -p "$work/redis"
redis-server --bind "$REDIS_HOST" --port "$REDIS_PORT" --dir "$work/redis" \
    --save "" --appendonly yes --appendfsync everysec --daemonize no \
    --logfile "$work/redis.log" &
pids+=($!)
for _ in $(seq 100); do
    redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
done
redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping | grep -q PONG || { cat "$work/redis.log"; exit 1; }

# --- edgekit counter nodes ----------------------------------------------------------------------
# Start a node with extra flags; sets $addr to its HTTP address. (Not in a command
# substitution: the node would hold its pipe open, and $pids would not reach the cleanup.)
start_node() {
    local name=$1
    shift
    "$EDGEKIT" counters serve --node-id "$name" --listen 127.0.0.1:0 --http 127.0.0.1:0 \
        --data "$work/$name" "$@" >/dev/null 2>"$work/$name.log" &
    pids+=($!)
    addr=
    for _ in $(seq 100); do
        addr=$(sed -n 's/^http listening on //p' "$work/$name.log" | head -1)
        [[ -n $addr ]] && break
        sleep 0.1
    done
    [[ -n $addr ]] || { cat "$work/$name.log" >&2; exit 1; }
}
start_node fsync
fsync_addr=$addr
start_node every --fsync-every 1s
every_addr=$addr

# --- load ---------------------------------------------------------------------------------------
redis_rate() {
    redis-benchmark -h "$REDIS_HOST" -p "$REDIS_PORT" -c "$CONNECTIONS" -n "$REQUESTS" \
        -t incr --csv | awk -F'"' '$2 == "INCR" {print $4}'
}

printf 'wrk.method = "POST"\n' >"$work/post.lua"
# wrk against one node; fails on any socket error or non-2xx answer; prints requests/s.
http_rate() {
    local addr=$1 out
    out=$(wrk -t 2 -c "$CONNECTIONS" -d "${SECONDS_PER_RUN}s" -s "$work/post.lua" \
        "http://$addr/v1/counters/bench/incr")
    if grep -q -E 'Non-2xx|Socket errors' <<<"$out"; then
        echo "$out" >&2
        exit 1
    fi
    awk '/^Requests\/sec:/ {print $2}' <<<"$out"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
redis=$(redis_rate)
fsync=$(http_rate "$fsync_addr")
every=$(http_rate "$every_addr")
# The counts must be real: each node's key holds one increment per answered request (checked
# loosely here: positive and readable; the CLI tests check exact totals).
for addr in "$fsync_addr" "$every_addr"; do
    "$EDGEKIT" counters get bench --node "$addr" | awk '$1 > 0 {ok = 1} END {exit !ok}'
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2fx", a / b}'; }
echo "load average before the runs: $load_before (1, 5, 15 min)"
echo "load: $CONNECTIONS connections, unpipelined, one key, loopback; $(nproc) cores shared by client and server"
echo "edgekit binary: $EDGEKIT; redis: $(redis-server --version | awk '{print $3}')"
printf '%-58s %12s %9s\n' "" "incr/s" "vs Redis"
printf '%-58s %12.0f %9s\n' "Redis INCR (appendfsync everysec), redis-benchmark" "$redis" "1.00x"
printf '%-58s %12.0f %9s\n' "edgekit HTTP incr, --fsync-every 1s (comparable), wrk" "$every" "$(ratio "$every" "$redis")"
printf '%-58s %12.0f %9s\n' "edgekit HTTP incr, fsync before ack (default), wrk" "$fsync" "$(ratio "$fsync" "$redis")"
