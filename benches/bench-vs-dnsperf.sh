#!/usr/bin/env bash
# Cross-check `edgekit bench dns` against dnsperf on the same server and the same query file.
#
# The server is Debian's Unbound answering from memory (local-data, no recursion), so both load
# generators measure the same fixed thing. Runs alternate (dnsperf, edgekit, dnsperf, ...) so
# drift in a shared machine's load hits both; the medians and their ratio are printed.
#
# What makes the check fair (docs/benchmarks.md, "DNS load generator", session 3):
# - The same outstanding-query count and shape: CONCURRENCY queries in total over SOCKETS
#   sockets, each driven by a sender and a receiver thread (dnsperf -q CONCURRENCY -c SOCKETS
#   -T SOCKETS, edgekit --concurrency CONCURRENCY --sockets SOCKETS; dnsperf splits -q and -c
#   per thread pair as edgekit splits --concurrency per socket).
# - The server must be the bottleneck. With PIN=1 (the default on 2 or more CPUs) Unbound runs on
#   CPU 0 and the generators on CPU 1, so the generator cannot take CPU from the server. The
#   script prints the share of its core the server used in every run ("server busy"): only runs
#   with the server near 100% measure the server; below that, qps is the outstanding count
#   divided by the round-trip time, and that depends on the generator's own wake-up latency.
# - Both count the same things: answered (dnsperf "completed") queries over the time from the
#   first send to the last reply; the 5 s timeout is the same; the per-run sent/answered/lost
#   and run time of both are printed.
#
# Environment: ROUNDS (3), DURATION seconds per run (10), CONCURRENCY outstanding (64),
# SOCKETS (4), UNBOUND_THREADS (1), ADDR (127.0.0.53), PORT (5300), RECEIVE_BATCH (16:
# `edgekit bench dns --receive-batch`, replies a receiver takes per call; 16 is dnsperf's),
# EDGEKIT (path to a built edgekit; default: cargo build --release -p edgekit),
# PIN (1 on 2+ CPUs: server on CPU 0, generators on CPU 1; PIN=0: nothing pinned, the
# generator shares the server's cores and the figures say more about CPU sharing than about
# either tool).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-64}
SOCKETS=${SOCKETS:-4}
UNBOUND_THREADS=${UNBOUND_THREADS:-1}
ADDR=${ADDR:-127.0.0.53}
PORT=${PORT:-5300}
RECEIVE_BATCH=${RECEIVE_BATCH:-16}
if [[ -z ${PIN:-} ]]; then
    PIN=0; (($(nproc) >= 2)) && PIN=1
fi
CLK_TCK=$(getconf CLK_TCK)

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
if [[ $PIN == 1 ]]; then SERVER_CPU=(taskset -c 0); CLIENT_CPU=(taskset -c 1); fi
"${SERVER_CPU[@]}" "$UNBOUND" -c "$work/unbound.conf" &
unbound_pid=$!
for _ in $(seq 1 50); do
    if "$EDGEKIT" bench dns --server "$ADDR:$PORT" --queries "$work/queries.txt" --count 1 \
        --timeout 200ms --json >/dev/null 2>&1; then
        break
    fi
    sleep 0.2
done

# CPU ticks (user + system, all threads) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Percent of one core a process used between two tick readings, over the generator's measured
# run time (first send to last reply; the server idles outside it, e.g. while dnsperf waits out
# the timeout of a lost query).
busy_percent() { # ticks-before ticks-after run-seconds
    awk -v a="$1" -v b="$2" -v w="$3" -v hz="$CLK_TCK" 'BEGIN {printf "%.0f", (b - a) / hz / w * 100}'
}
# CPU microseconds the generator itself spent per answered query, and the share of one core it
# used (user + system and elapsed, from /usr/bin/time): a generator near 100% of its core
# measures itself, not the server. (After a lost query dnsperf spins until its timeout, which
# inflates its figures; no query is lost at the default load.)
cpu_per_query() { # time-output-file answered
    awk -v q="$2" '{printf "%.2f", ($1 + $2) * 1e6 / q}' "$1"
}
generator_busy() { # time-output-file
    awk '{printf "%.0f", ($1 + $2) / $3 * 100}' "$1"
}

dnsperf_qps=(); edgekit_qps=()
dnsperf_cpu=(); edgekit_cpu=()
dnsperf_busy=(); edgekit_busy=()
dnsperf_server=(); edgekit_server=()
for round in $(seq 1 "$ROUNDS"); do
    before=$(cpu_ticks "$unbound_pid")
    out=$(/usr/bin/time -f '%U %S %e' -o "$work/cpu" "${CLIENT_CPU[@]}" dnsperf -s "$ADDR" -p "$PORT" \
        -d "$work/queries.txt" -l "$DURATION" -c "$SOCKETS" -T "$SOCKETS" -q "$CONCURRENCY" -t 5)
    after=$(cpu_ticks "$unbound_pid")
    qps=$(sed -n 's/^ *Queries per second: *\([0-9.]*\).*/\1/p' <<<"$out")
    sent=$(sed -n 's/^ *Queries sent: *\([0-9]*\).*/\1/p' <<<"$out")
    answered=$(sed -n 's/^ *Queries completed: *\([0-9]*\).*/\1/p' <<<"$out")
    lost=$(sed -n 's/^ *Queries lost: *\([0-9]*\).*/\1/p' <<<"$out")
    runtime=$(sed -n 's/^ *Run time (s): *\([0-9.]*\).*/\1/p' <<<"$out")
    latency=$(sed -n 's/^ *Average Latency (s): *\([0-9.]*\).*/\1/p' <<<"$out")
    server=$(busy_percent "$before" "$after" "$runtime")
    cpu=$(cpu_per_query "$work/cpu" "$answered")
    busy=$(generator_busy "$work/cpu")
    echo "round $round dnsperf: $qps qps (sent $sent, answered $answered, lost $lost in ${runtime}s), mean latency ${latency}s; generator ${cpu} CPU us/query, ${busy}% busy; server ${server}% busy"
    dnsperf_qps+=("$qps"); dnsperf_cpu+=("$cpu"); dnsperf_busy+=("$busy"); dnsperf_server+=("$server")

    before=$(cpu_ticks "$unbound_pid")
    json=$(/usr/bin/time -f '%U %S %e' -o "$work/cpu" "${CLIENT_CPU[@]}" "$EDGEKIT" bench dns \
        --server "$ADDR:$PORT" --queries "$work/queries.txt" \
        --duration "${DURATION}s" --concurrency "$CONCURRENCY" --sockets "$SOCKETS" \
        --receive-batch "$RECEIVE_BATCH" --json)
    after=$(cpu_ticks "$unbound_pid")
    qps=$(sed -n 's/^ *"qps": *\([0-9.]*\).*/\1/p' <<<"$json")
    sent=$(sed -n 's/^ *"sent": *\([0-9]*\).*/\1/p' <<<"$json")
    answered=$(sed -n 's/^ *"answered": *\([0-9]*\).*/\1/p' <<<"$json")
    lost=$(sed -n 's/^ *"lost": *\([0-9]*\).*/\1/p' <<<"$json")
    runtime=$(sed -n 's/^ *"elapsed_seconds": *\([0-9.]*\).*/\1/p' <<<"$json")
    mean=$(sed -n 's/^ *"mean": *\([0-9.]*\).*/\1/p' <<<"$json")
    p99=$(sed -n 's/^ *"p99": *\([0-9.]*\).*/\1/p' <<<"$json")
    server=$(busy_percent "$before" "$after" "$runtime")
    cpu=$(cpu_per_query "$work/cpu" "$answered")
    busy=$(generator_busy "$work/cpu")
    echo "round $round edgekit: $qps qps (sent $sent, answered $answered, lost $lost in ${runtime}s), mean latency ${mean}ms, p99 ${p99}ms; generator ${cpu} CPU us/query, ${busy}% busy; server ${server}% busy"
    edgekit_qps+=("$qps"); edgekit_cpu+=("$cpu"); edgekit_busy+=("$busy"); edgekit_server+=("$server")
done

d=$(median "${dnsperf_qps[@]}")
e=$(median "${edgekit_qps[@]}")
ds=$(median "${dnsperf_server[@]}")
es=$(median "${edgekit_server[@]}")
echo
echo "server: unbound $("$UNBOUND" -V | sed -n 's/^Version //p'), $UNBOUND_THREADS thread(s), local-data on $ADDR:$PORT"
if [[ $PIN == 1 ]]; then
    echo "pinned: server CPU 0, generators CPU 1"
else
    echo "pinned: no (the generators share the server's CPUs)"
fi
echo "load:   ${CONCURRENCY} outstanding over ${SOCKETS} sockets/threads, ${DURATION}s x ${ROUNDS} rounds each"
echo "dnsperf median qps:         $d"
echo "edgekit bench dns median:   $e"
echo "generator CPU per query (median): dnsperf $(median "${dnsperf_cpu[@]}") us, edgekit $(median "${edgekit_cpu[@]}") us"
echo "generator busy, % of a core (median): dnsperf $(median "${dnsperf_busy[@]}"), edgekit $(median "${edgekit_busy[@]}")"
echo "server busy, % of a core (median): under dnsperf $ds, under edgekit $es"
awk -v e="$e" -v d="$d" -v ds="$ds" -v es="$es" -v pin="$PIN" 'BEGIN {
    r = e / d
    printf "ratio edgekit/dnsperf:      %.3f (%s 10%%)\n", r, (r >= 0.9 && r <= 1.1) ? "within" : "NOT within"
    # The server is the bottleneck when it is pinned and kept its core (nearly) full under both.
    bound = pin == 1 && ds >= 95 && es >= 95
    printf "server the bottleneck:      %s\n", bound ? "yes (a fair agreement check)" \
        : "NO: the ratio measures the generators as much as the server"
}'
