#!/usr/bin/env bash
# Cross-check `edgekit bench dns` against dnsperf on the same server and the same query file.
#
# The server is Debian's Unbound answering from memory (local-data, no recursion), so both load
# generators measure the same fixed thing. Runs alternate (dnsperf, edgekit, dnsperf, ...) so
# drift in a shared machine's load hits both; the medians and their ratio are printed.
# Both generators get the same shape: SOCKETS sockets, each driven by its own thread (dnsperf
# -c N -T N, edgekit --sockets N), CONCURRENCY queries outstanding in total. On a small machine
# the generator competes with the server for CPU, so the shape matters as much as the server.
#
# Environment: ROUNDS (3), DURATION seconds per run (10), CONCURRENCY outstanding (64),
# SOCKETS (4), UNBOUND_THREADS (1), ADDR (127.0.0.53), PORT (5300),
# EDGEKIT (path to a built edgekit; default: cargo build --release -p edgekit),
# PIN (unset; 1: Unbound on CPU 0 and the generators on CPU 1, so the server has a core of its
# own and the generators do not take CPU from it: then both should read the server's limit).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-64}
SOCKETS=${SOCKETS:-4}
UNBOUND_THREADS=${UNBOUND_THREADS:-1}
ADDR=${ADDR:-127.0.0.53}
PORT=${PORT:-5300}

need=()
command -v dnsperf >/dev/null || need+=(dnsperf)
command -v unbound >/dev/null || need+=(unbound)
if ((${#need[@]})); then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}"
fi
UNBOUND=$(command -v unbound || echo /usr/sbin/unbound)

if [[ -z ${EDGEKIT:-} ]]; then
    cargo build --release -p edgekit
    EDGEKIT=target/release/edgekit
fi

work=$(mktemp -d)
unbound_pid=""
cleanup() {
    [[ -n $unbound_pid ]] && kill "$unbound_pid" 2>/dev/null && wait "$unbound_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# 1000 names with A and AAAA records, and names that do not exist (NXDOMAIN from the static
# zone): the query file mixes all three, like a resolver's hot set.
{
    cat <<CONF
server:
    interface: $ADDR@$PORT
    port: $PORT
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "$work"
    pidfile: ""
    logfile: ""
    use-syslog: no
    verbosity: 0
    num-threads: $UNBOUND_THREADS
    so-reuseport: yes
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    local-zone: "bench.test." static
CONF
    for i in $(seq 1 1000); do
        echo "    local-data: \"host$i.bench.test. 3600 IN A 192.0.2.$((i % 250 + 1))\""
        echo "    local-data: \"host$i.bench.test. 3600 IN AAAA 2001:db8::$i\""
    done
} >"$work/unbound.conf"
for i in $(seq 1 1000); do
    echo "host$i.bench.test A"
    ((i % 4 == 0)) && echo "host$i.bench.test AAAA"
    ((i % 10 == 0)) && echo "missing$i.bench.test A"
done >"$work/queries.txt"

SERVER_CPU=(); CLIENT_CPU=()
if [[ -n ${PIN:-} ]]; then SERVER_CPU=(taskset -c 0); CLIENT_CPU=(taskset -c 1); fi
"${SERVER_CPU[@]}" "$UNBOUND" -c "$work/unbound.conf" &
unbound_pid=$!
for _ in $(seq 1 50); do
    if "$EDGEKIT" bench dns --server "$ADDR:$PORT" --queries "$work/queries.txt" --count 1 \
        --timeout 200ms --json >/dev/null 2>&1; then
        break
    fi
    sleep 0.2
done

dnsperf_qps=()
edgekit_qps=()
dnsperf_cpu=()
edgekit_cpu=()
# CPU microseconds the generator itself spent per answered query (user + system, from
# /usr/bin/time): on a machine the generator shares with the server, a generator that needs more
# CPU per query leaves less to the server and reads lower.
cpu_per_query() { # time-output-file qps
    awk -v q="$2" -v d="$DURATION" '{printf "%.2f", ($1 + $2) * 1e6 / (q * d)}' "$1"
}
for round in $(seq 1 "$ROUNDS"); do
    out=$(/usr/bin/time -f '%U %S' -o "$work/cpu" "${CLIENT_CPU[@]}" dnsperf -s "$ADDR" -p "$PORT" \
        -d "$work/queries.txt" -l "$DURATION" -c "$SOCKETS" -T "$SOCKETS" -q "$CONCURRENCY" -t 5)
    qps=$(sed -n 's/^ *Queries per second: *\([0-9.]*\).*/\1/p' <<<"$out")
    lost=$(sed -n 's/^ *Queries lost: *\([0-9]*\).*/\1/p' <<<"$out")
    latency=$(sed -n 's/^ *Average Latency (s): *\([0-9.]*\).*/\1/p' <<<"$out")
    cpu=$(cpu_per_query "$work/cpu" "$qps")
    echo "round $round dnsperf: $qps qps, lost $lost, mean latency ${latency}s, ${cpu} CPU us/query"
    dnsperf_qps+=("$qps")
    dnsperf_cpu+=("$cpu")

    json=$(/usr/bin/time -f '%U %S' -o "$work/cpu" "${CLIENT_CPU[@]}" "$EDGEKIT" bench dns \
        --server "$ADDR:$PORT" --queries "$work/queries.txt" \
        --duration "${DURATION}s" --concurrency "$CONCURRENCY" --sockets "$SOCKETS" --json)
    qps=$(sed -n 's/^ *"qps": *\([0-9.]*\).*/\1/p' <<<"$json")
    lost=$(sed -n 's/^ *"lost": *\([0-9]*\).*/\1/p' <<<"$json")
    mean=$(sed -n 's/^ *"mean": *\([0-9.]*\).*/\1/p' <<<"$json")
    p99=$(sed -n 's/^ *"p99": *\([0-9.]*\).*/\1/p' <<<"$json")
    cpu=$(cpu_per_query "$work/cpu" "$qps")
    echo "round $round edgekit: $qps qps, lost $lost, mean latency ${mean}ms, p99 ${p99}ms, ${cpu} CPU us/query"
    edgekit_qps+=("$qps")
    edgekit_cpu+=("$cpu")
done

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
d=$(median "${dnsperf_qps[@]}")
e=$(median "${edgekit_qps[@]}")
echo
echo "server: unbound $("$UNBOUND" -V | sed -n 's/^Version //p'), $UNBOUND_THREADS thread(s), local-data on $ADDR:$PORT"
echo "pinned: ${PIN:-no} (server CPU 0, generators CPU 1)"
echo "load:   ${CONCURRENCY} outstanding over ${SOCKETS} sockets/threads, ${DURATION}s x ${ROUNDS} rounds each"
echo "dnsperf median qps:         $d"
echo "edgekit bench dns median:   $e"
echo "generator CPU per query (median): dnsperf $(median "${dnsperf_cpu[@]}") us, edgekit $(median "${edgekit_cpu[@]}") us"
awk -v e="$e" -v d="$d" 'BEGIN {
    r = e / d
    printf "ratio edgekit/dnsperf:      %.3f (%s 10%%)\n", r, (r >= 0.9 && r <= 1.1) ? "within" : "NOT within"
}'
