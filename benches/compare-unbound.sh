#!/usr/bin/env bash
# `edgekit dns serve` against Unbound, both recursive, both in front of the same NSD hierarchy.
#
# Three NSD instances (Debian) serve a root, a TLD `bench.` and a leaf zone `zone.bench.` (1000
# hosts) on 127.0.54.1-3:53. Unbound (127.0.54.10:53) and edgekit (127.0.54.11:53) start with the same root
# hints and THREADS threads each. Then, per server:
#   cold:   the query file (distinct names) once, from a fresh process: wall time, the upstream
#           queries NSD counted (nsd-control stats_noreset num.queries), and the CPU the server,
#           the NSD processes and the generator each used (the machine is near full during a
#           cold batch, so the batch time follows their sum);
#   cached: ROUNDS alternating runs of dnsperf and `edgekit bench dns` on the now-warm cache.
#   agreement: (AGREE=1, the default on 2+ CPUs) each server's threads moved to CPU 0 and the
#           generators run on CPU 1, ROUNDS rounds of one run of dnsperf and one of `edgekit bench
#           dns`, back to back, in alternating order: with the server the bottleneck, both
#           generators must read the same qps (the median of the rounds' ratios within 10%; a
#           round's ratio is free of the drift between rounds). The unpinned cached runs above
#           are the server comparison, but there the generator shares the servers' two cores,
#           so the two generators' figures differ by how much CPU each leaves to the server
#           (docs/benchmarks.md, session 3).
# Prints the medians, p99s (edgekit bench dns; dnsperf prints no percentiles) and the ratios,
# and for every cached run the share of a core the server used, per server thread (how the
# kernel's SO_REUSEPORT hash spread the generator's sockets over the server's).
# Needs root for port 53. Runs by itself on a fresh machine (not in CI).
#
# Environment: ROUNDS (3), DURATION seconds per cached run (10), CONCURRENCY outstanding (64),
# SOCKETS (4), THREADS (2), EDGEKIT (path to a built edgekit; default: cargo build --release),
# AGREE (1 on 2+ CPUs, 0 to skip the pinned agreement runs), COLD_RUNS (41: how many times both
# servers are restarted for the cold batch; medians are printed, and the per-run ratio's median
# with a 95% interval, which needs 6 or more), ROUNDS=0 for the cold batch only,
# HOSTS (1000: names in the leaf zone; the query file has 1.35 per host), COLD_CONCURRENCY (16:
# questions outstanding in the cold batch), COLD_SOCKETS (4: generator sockets they are spread
# over; more sockets make an uneven SO_REUSEPORT spread over the server's threads rarer, at
# the cost of a generator thread per socket), AGREE_ROUNDS (ROUNDS), AGREE_THREADS (THREADS: the
# agreement runs restart both servers with this many threads), AGREE_CPU_QUOTA (unset: a
# percentage of one core the server may use in the agreement runs, set with a cgroup quota),
# SYSCALLS (0; 1: count the server's system calls per query in the agreement runs, with perf),
# RECEIVE_BATCH (16: `edgekit bench dns --receive-batch`, replies a receiver takes per call;
# 16 is dnsperf's).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-64}
SOCKETS=${SOCKETS:-4}
THREADS=${THREADS:-2}
COLD_THREADS=$THREADS
COLD_RUNS=${COLD_RUNS:-41}
HOSTS=${HOSTS:-1000}
COLD_CONCURRENCY=${COLD_CONCURRENCY:-16}
COLD_SOCKETS=${COLD_SOCKETS:-4}
AGREE_ROUNDS=${AGREE_ROUNDS:-$ROUNDS}
AGREE_THREADS=${AGREE_THREADS:-$THREADS}
AGREE_CPU_QUOTA=${AGREE_CPU_QUOTA:-}
SYSCALLS=${SYSCALLS:-0}
RECEIVE_BATCH=${RECEIVE_BATCH:-16}
NET=127.0.54
UNBOUND_ADDR=$NET.10
EDGEKIT_ADDR=$NET.11
if [[ -z ${AGREE:-} ]]; then
    AGREE=0; (($(nproc) >= 2)) && AGREE=1
fi

need=()
command -v dnsperf >/dev/null || need+=(dnsperf)
command -v unbound >/dev/null || [[ -x /usr/sbin/unbound ]] || need+=(unbound)
command -v nsd >/dev/null || [[ -x /usr/sbin/nsd ]] || need+=(nsd)
if ((${#need[@]})); then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}"
fi
UNBOUND=$(command -v unbound || echo /usr/sbin/unbound)
NSD=$(command -v nsd || echo /usr/sbin/nsd)
NSD_CONTROL=$(command -v nsd-control || echo /usr/sbin/nsd-control)

if [[ -z ${EDGEKIT:-} ]]; then
    cargo build --release -p edgekit
    EDGEKIT=target/release/edgekit
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# --- the hierarchy ----------------------------------------------------------------------------
cat >"$work/root.zone" <<ZONE
\$ORIGIN .
\$TTL 86400
.                 IN SOA ns.root. hostmaster.root. 1 1800 900 604800 86400
.                 IN NS  ns.root.
ns.root.          IN A   $NET.1
bench.            IN NS  ns.bench.
ns.bench.         IN A   $NET.2
ZONE
cat >"$work/bench.zone" <<ZONE
\$ORIGIN bench.
\$TTL 86400
@        IN SOA ns.bench. hostmaster.bench. 1 1800 900 604800 3600
@        IN NS  ns.bench.
ns       IN A   $NET.2
zone     IN NS  ns.zone.bench.
ns.zone  IN A   $NET.3
ZONE
{
    echo "\$ORIGIN zone.bench."
    echo "\$TTL 3600"
    echo "@    IN SOA ns.zone.bench. hostmaster.zone.bench. 1 3600 600 86400 3600"
    echo "@    IN NS  ns"
    echo "ns   IN A   $NET.3"
    for i in $(seq 1 "$HOSTS"); do
        echo "host$i IN A 192.0.2.$((i % 250 + 1))"
    done
} >"$work/leaf.zone"
# One NSD per authoritative server, each on its own address with only its own zone, so the
# resolvers see real referrals (one NSD serving every zone on every address would answer all
# of them authoritatively from the root address).
start_nsd() { # label ip zone-name zone-file
    local dir="$work/nsd-$1"
    mkdir -p "$dir"
    cp "$work/$4" "$dir/"
    cat >"$dir/nsd.conf" <<CONF
server:
  ip-address: $2
  port: 53
  username: ""
  chroot: ""
  zonesdir: "$dir"
  zonelistfile: "$dir/zone.list"
  database: ""
  pidfile: "$dir/nsd.pid"
  xfrdfile: "$dir/xfrd.state"
  xfrdir: "$dir"
  logfile: "$dir/nsd.log"
  server-count: 1
  do-ip6: no
  # NSD rate-limits responses per client /24 by default (200/s); both resolvers come from
  # 127.0.0.0/24 at thousands of queries per second, so its drops would turn the cold batch into
  # a measure of each resolver's retry timer instead of its resolution work.
  rrl-ratelimit: 0
remote-control:
  control-enable: yes
  control-interface: "$dir/nsd.sock"
zone:
  name: "$3"
  zonefile: "$4"
CONF
    "$NSD" -d -c "$dir/nsd.conf" >/dev/null 2>&1 &
    pids+=($!)
}
printf '.  3600000 NS ns.root.\nns.root. 3600000 A %s\n' "$NET.1" >"$work/root.hints"

# 1000 existing names, plus NODATA (AAAA) and NXDOMAIN questions: a resolver's hot set.
for i in $(seq 1 "$HOSTS"); do
    echo "host$i.zone.bench A"
    ((i % 4 == 0)) && echo "host$i.zone.bench AAAA"
    ((i % 10 == 0)) && echo "missing$i.zone.bench A"
done >"$work/queries.txt"
total_queries=$(wc -l <"$work/queries.txt")

start_nsd root "$NET.1" . root.zone
start_nsd tld "$NET.2" bench. bench.zone
start_nsd leaf "$NET.3" zone.bench. leaf.zone
# Queries all three have answered so far.
upstream() {
    local total=0 label count
    for label in root tld leaf; do
        count=$("$NSD_CONTROL" -c "$work/nsd-$label/nsd.conf" stats_noreset | sed -n 's/^num.queries=//p')
        total=$((total + count))
    done
    echo "$total"
}
for _ in $(seq 1 50); do upstream >/dev/null 2>&1 && break; sleep 0.2; done

cat >"$work/unbound.conf" <<CONF
server:
  interface: $UNBOUND_ADDR
  port: 53
  username: ""
  chroot: ""
  directory: "$work"
  pidfile: ""
  logfile: ""
  use-syslog: no
  do-daemonize: no
  do-ip6: no
  verbosity: 0
  num-threads: $THREADS
  so-reuseport: yes
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  root-hints: "$work/root.hints"
  module-config: "iterator"
  qname-minimisation: yes
remote-control:
  control-enable: no
CONF

json_field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval('d' + sys.argv[1]))" "$1"; }

# Wait until a server answers, without touching the measured names.
wait_answering() {
    printf 'ns.bench NS\n' >"$work/probe.txt"
    for _ in $(seq 1 100); do
        if "$EDGEKIT" bench dns --server "$1:53" --queries "$work/probe.txt" --count 1 \
            --timeout 300ms --json 2>/dev/null | json_field '["answered"]' | grep -qx 1; then
            return 0
        fi
        sleep 0.1
    done
    echo "$1 does not answer" >&2
    exit 1
}

# Per-thread CPU time of a process in nanoseconds: "tid ns" lines, from the scheduler's own
# account (first field of schedstat), fine enough for a 50 ms batch where stat's 10 ms ticks
# are not.
thread_cpu_ns() {
    local stat
    for stat in /proc/"$1"/task/*/schedstat; do
        awk -v tid="$(basename "$(dirname "$stat")")" '{print tid, $1}' "$stat" 2>/dev/null || true
    done
}
# CPU nanoseconds used so far by every NSD process of this run (main, server and xfrd
# processes): the authorities' share of the work a cold batch puts on the machine.
authority_cpu_ns() {
    local pid
    for pid in $(pgrep -f "nsd -d -c $work/" || true); do
        thread_cpu_ns "$pid"
    done | awk '{t += $2} END {printf "%d\n", t}'
}
# Resident memory of a server in KiB.
rss_kib() {
    awk '/^VmRSS:/ {print $2}' /proc/"$1"/status 2>/dev/null || echo 0
}
# Context switches over all of a server's threads: voluntary + involuntary (each hand-off of a
# question between threads, and each wait for a reply, is one), or with `voluntary` only the
# times a thread gave up the CPU to wait (for a datagram mostly; a lock or futex wait counts too).
context_switches() { # pid [voluntary]
    local kinds='^(non)?voluntary_ctxt_switches'
    [[ ${2:-} == voluntary ]] && kinds='^voluntary_ctxt_switches'
    cat /proc/"$1"/task/*/status 2>/dev/null | awk -v kinds="$kinds" '$0 ~ kinds {t += $2} END {print t + 0}'
}
# cold NAME ADDR: the query file once each, 16 outstanding. Records the batch time (first send
# to last reply, from the generator's report: the figure compared), the process wall time
# around it (includes the generator's start-up and exit), the upstream queries NSD counted and
# the per-question latency percentiles.
cold() {
    local before after started ended authority_before
    before=$(upstream)
    authority_before=$(authority_cpu_ns)
    thread_cpu_ns "${server_pid[$1]}" >"$work/cold-cpu-before"
    local switches_before rss_before
    rss_before=$(rss_kib "${server_pid[$1]}")
    switches_before=$(context_switches "${server_pid[$1]}")
    started=$(date +%s.%N)
    /usr/bin/time -f '%U %S' -o "$work/cold-generator-cpu" \
        "$EDGEKIT" bench dns --server "$2:53" --queries "$work/queries.txt" --concurrency "$COLD_CONCURRENCY" \
        --sockets "$COLD_SOCKETS" --timeout 5s --json >"$work/cold-$1.json"
    ended=$(date +%s.%N)
    cold_switches[$1]+="$(($(context_switches "${server_pid[$1]}") - switches_before)) "
    cold_rss[$1]+="$(($(rss_kib "${server_pid[$1]}") - rss_before)) "
    thread_cpu_ns "${server_pid[$1]}" >"$work/cold-cpu-after"
    cold_authority[$1]+="$(awk -v a="$authority_before" -v b="$(authority_cpu_ns)" 'BEGIN {printf "%.3f", (b - a) / 1e9}') "
    cold_generator[$1]+="$(awk '{printf "%.3f", $1 + $2}' "$work/cold-generator-cpu") "
    # CPU seconds in all, then per busy thread (name: seconds), to see where a server spends it.
    cold_cpu[$1]+="$(awk 'NR == FNR {before[$1] = $2; next} {t += $2 - before[$1]} END {printf "%.3f", t / 1e9}' \
        "$work/cold-cpu-before" "$work/cold-cpu-after") "
    cold_threads[$1]=$(awk 'NR == FNR {before[$1] = $2; next}
        {d = ($2 - before[$1]) / 1e9; if (d >= 0.005) {cmd = "cat /proc/'"${server_pid[$1]}"'/task/" $1 "/comm"; cmd | getline name; close(cmd); printf "%s%s %.2f", sep, name, d; sep = ", "}}' \
        "$work/cold-cpu-before" "$work/cold-cpu-after")
    after=$(upstream)
    cold_process[$1]+="$(awk -v a="$started" -v b="$ended" 'BEGIN {printf "%.3f", b - a}') "
    cold_wall[$1]+="$(json_field '["elapsed_seconds"]' <"$work/cold-$1.json") "
    cold_upstream[$1]+="$((after - before)) "
    cold_lost[$1]+="$(json_field '["lost"]' <"$work/cold-$1.json") "
    cold_latency[$1]+="$(json_field '["latency_ms"]["p50"]' <"$work/cold-$1.json")/$(json_field '["latency_ms"]["p99"]' <"$work/cold-$1.json")/$(json_field '["latency_ms"]["max"]' <"$work/cold-$1.json") "
}

declare -A cold_authority cold_generator cold_rss cold_switches cold_threads cold_cpu cold_wall cold_process cold_upstream cold_lost cold_latency server_pid
start_servers() {
    sed -i "s/^  num-threads: .*/  num-threads: $THREADS/" "$work/unbound.conf"
    "$UNBOUND" -d -c "$work/unbound.conf" >/dev/null 2>&1 &
    pids+=($!)
    server_pid[unbound]=$!
    "$EDGEKIT" -q dns serve --listen "$EDGEKIT_ADDR:53" --threads "$THREADS" \
        --root-hints "$work/root.hints" --allow-loopback 2>"$work/edgekit.log" &
    pids+=($!)
    server_pid[edgekit]=$!
    wait_answering "$UNBOUND_ADDR"
    wait_answering "$EDGEKIT_ADDR"
}
stop_servers() {
    local pid
    for pid in "${server_pid[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${server_pid[@]}"; do wait "$pid" 2>/dev/null || true; done
}
# COLD_RUNS fresh starts of both servers; the order alternates so neither always goes first.
for run in $(seq 1 "$COLD_RUNS"); do
    ((run > 1)) && stop_servers
    start_servers
    order=(unbound edgekit); ((run % 2 == 0)) && order=(edgekit unbound)
    for server in "${order[@]}"; do
        addr=$UNBOUND_ADDR; [[ $server == edgekit ]] && addr=$EDGEKIT_ADDR
        cold "$server" "$addr"
        set -- ${cold_wall[$server]}; w=${*: -1}
        set -- ${cold_upstream[$server]}; u=${*: -1}
        set -- ${cold_latency[$server]}; l=${*: -1}
        set -- ${cold_cpu[$server]}; c=${*: -1}
        set -- ${cold_switches[$server]}; s=${*: -1}
        set -- ${cold_authority[$server]}; a=${*: -1}
        set -- ${cold_generator[$server]}; g=${*: -1}
        echo "cold run $run $server: batch ${w} s, upstream queries $u, latency p50/p99/max ${l} ms, server CPU ${c} s (${cold_threads[$server]}), context switches $s, NSD CPU ${a} s, generator CPU ${g} s"
    done
done

# From two thread_cpu_ns snapshots and the generator's run time (first send to last reply): the
# server's total share of a core, then each busy thread's share, e.g. "112% (61+51)".
server_busy() { # before-file after-file run-seconds
    awk -v w="$3" '
        NR == FNR {before[$1] = $2; next}
        {d = ($2 - before[$1]) / 1e9 / w * 100; total += d; if (d >= 2) parts = parts sep sprintf("%.0f", d); if (d >= 2) sep = "+"}
        END {printf "%.0f%% (%s)", total, parts}' "$1" "$2"
}
# measure SERVER ADDR TOOL [taskset prefix...]: one run of one generator; sets run_qps, run_p99,
# run_lost, run_server (the server's CPU during the run) and run_generator (the generator's own
# CPU: user + system over its elapsed time, from /usr/bin/time; near 100% of its one core when
# pinned, it measures itself rather than the server).
measure() {
    local server=$1 addr=$2 tool=$3 out runtime
    shift 3
    thread_cpu_ns "${server_pid[$server]}" >"$work/cpu-before"
    local sleeps_before
    sleeps_before=$(context_switches "${server_pid[$server]}" voluntary)
    local counter=""
    if [[ $SYSCALLS == 1 ]]; then
        perf stat -x, -o "$work/syscalls" -p "${server_pid[$server]}" \
            -e syscalls:sys_enter_recvmmsg,syscalls:sys_enter_sendmmsg,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_sched_yield &
        counter=$!
        sleep 0.2
    fi
    if [[ $tool == dnsperf ]]; then
        out=$(/usr/bin/time -f '%U %S %e' -o "$work/generator-cpu" \
            "$@" dnsperf -s "$addr" -p 53 -d "$work/queries.txt" -l "$DURATION" \
            -c "$SOCKETS" -T "$SOCKETS" -q "$CONCURRENCY" -t 5)
        run_qps=$(sed -n 's/^ *Queries per second: *\([0-9.]*\).*/\1/p' <<<"$out")
        run_lost=$(sed -n 's/^ *Queries lost: *\([0-9]*\).*/\1/p' <<<"$out")
        runtime=$(sed -n 's/^ *Run time (s): *\([0-9.]*\).*/\1/p' <<<"$out")
        run_p99=""
    else
        /usr/bin/time -f '%U %S %e' -o "$work/generator-cpu" \
            "$@" "$EDGEKIT" bench dns --server "$addr:53" --queries "$work/queries.txt" \
            --duration "${DURATION}s" --concurrency "$CONCURRENCY" --sockets "$SOCKETS" \
            --receive-batch "$RECEIVE_BATCH" --json >"$work/bench.json"
        run_qps=$(json_field '["qps"]' <"$work/bench.json")
        run_p99=$(json_field '["latency_ms"]["p99"]' <"$work/bench.json")
        run_lost=$(json_field '["lost"]' <"$work/bench.json")
        runtime=$(json_field '["elapsed_seconds"]' <"$work/bench.json")
    fi
    thread_cpu_ns "${server_pid[$server]}" >"$work/cpu-after"
    # How often the server waited, per 1000 answered queries: each wait ends in a wake-up (an
    # inter-processor interrupt on a VM), which a generator that keeps the server's socket fed
    # rarely causes (docs/benchmarks.md, session 9). Counted over the generator's whole process,
    # start-up and exit included, so slightly high for both generators alike.
    run_sleeps=$(awk -v a="$sleeps_before" -v b="$(context_switches "${server_pid[$server]}" voluntary)" -v q="${run_qps:-0}" -v t="${runtime:-0}" \
        'BEGIN {if (q * t > 0) printf "%.1f", (b - a) / (q * t) * 1000; else print "n/a"}')
    run_syscalls=""
    if [[ -n $counter ]]; then
        kill -INT "$counter"; wait "$counter" 2>/dev/null || true
        # Server system calls per answered query, by call (e.g. recvmmsg 0.12: 8 queries a batch).
        local answered
        answered=$(awk -v q="$run_qps" -v t="$runtime" 'BEGIN {printf "%d", q * t}')
        run_syscalls=$(awk -F, -v q="$answered" '$3 ~ /sys_enter_/ {sub(/.*sys_enter_/, "", $3); printf "%s%s %.3f", sep, $3, $1 / q; sep = ", "}' "$work/syscalls")
        run_syscalls="; server system calls per query: $run_syscalls"
    fi
    run_server=$(server_busy "$work/cpu-before" "$work/cpu-after" "$runtime")
    run_generator=$(awk '{printf "%.0f%%", ($1 + $2) / $3 * 100}' "$work/generator-cpu")
}

declare -A perf_qps bench_qps bench_p99
# Agreement runs, keyed "server/generator" (generator: dnsperf or edgekit); ratios by server.
declare -A agree_qps agree_busy agree_generator agree_sleeps
for round in $(seq 1 "$ROUNDS"); do
    for server in unbound edgekit; do
        addr=$UNBOUND_ADDR; [[ $server == edgekit ]] && addr=$EDGEKIT_ADDR
        measure "$server" "$addr" dnsperf
        echo "round $round $server dnsperf: $run_qps qps, lost $run_lost; server CPU $run_server, generator CPU $run_generator"
        perf_qps[$server]+="$run_qps "
        measure "$server" "$addr" edgekit
        echo "round $round $server edgekit bench dns: $run_qps qps, p99 ${run_p99}ms, lost $run_lost; server CPU $run_server, generator CPU $run_generator"
        bench_qps[$server]+="$run_qps "
        bench_p99[$server]+="$run_p99 "
    done
done

# The agreement check: the server (all its threads) on CPU 0, the generator on CPU 1, so the
# server is the bottleneck and neither generator takes CPU from it.
# AGREE_THREADS: restart both servers with that many threads first (warmed with one pass of
# the query file). AGREE_CPU_QUOTA: also cap the server at that percentage of one core (a
# cgroup CPU quota, 10 ms period), for a server that answers faster on one core than a
# generator can send from the other; the server is then the bottleneck when it uses (nearly)
# all of its quota.
cpu_cgroup=""
quota_on() { # pid percent
    if [[ -f /sys/fs/cgroup/cgroup.controllers ]] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers; then
        cpu_cgroup=/sys/fs/cgroup/compare-unbound-$$
        mkdir -p "$cpu_cgroup"
        echo "$(($2 * 100)) 10000" >"$cpu_cgroup/cpu.max"
    elif [[ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]]; then
        cpu_cgroup=/sys/fs/cgroup/cpu/compare-unbound-$$
        mkdir -p "$cpu_cgroup"
        echo 10000 >"$cpu_cgroup/cpu.cfs_period_us"
        echo $(($2 * 100)) >"$cpu_cgroup/cpu.cfs_quota_us"
    else
        echo "no cgroup CPU controller to set AGREE_CPU_QUOTA with" >&2
        exit 1
    fi
    echo "$1" >"$cpu_cgroup/cgroup.procs"
}
quota_off() { # moves whatever is in the cgroup back to its parent and removes it
    [[ -n $cpu_cgroup ]] || return 0
    local pid
    while read -r pid; do
        echo "$pid" >"$(dirname "$cpu_cgroup")/cgroup.procs" 2>/dev/null || true
    done <"$cpu_cgroup/cgroup.procs"
    rmdir "$cpu_cgroup" 2>/dev/null || true
    cpu_cgroup=""
}
trap 'quota_off; cleanup' EXIT
if [[ $AGREE == 1 ]]; then
    all_cpus="0-$(($(nproc) - 1))"
    if [[ $AGREE_THREADS != "$THREADS" ]]; then
        stop_servers
        THREADS=$AGREE_THREADS
        start_servers
        for server in unbound edgekit; do
            addr=$UNBOUND_ADDR; [[ $server == edgekit ]] && addr=$EDGEKIT_ADDR
            "$EDGEKIT" bench dns --server "$addr:53" --queries "$work/queries.txt" --concurrency 16 \
                --timeout 5s --json >/dev/null
        done
    fi
    for server in unbound edgekit; do
        addr=$UNBOUND_ADDR; [[ $server == edgekit ]] && addr=$EDGEKIT_ADDR
        taskset -a -p -c 0 "${server_pid[$server]}" >/dev/null
        [[ -n $AGREE_CPU_QUOTA ]] && quota_on "${server_pid[$server]}" "$AGREE_CPU_QUOTA"
        for round in $(seq 1 "$AGREE_ROUNDS"); do
            # The order alternates, so a drift within a round favours neither generator.
            order=(dnsperf edgekit); ((round % 2 == 0)) && order=(edgekit dnsperf)
            for generator in "${order[@]}"; do
                measure "$server" "$addr" "$generator" taskset -c 1
                name=dnsperf; [[ $generator == edgekit ]] && name="edgekit bench dns"
                echo "agreement round $round $server (pinned) $name: $run_qps qps, lost $run_lost; server CPU $run_server, slept $run_sleeps times per 1000 queries, generator CPU $run_generator$run_syscalls"
                agree_sleeps[$server/$generator]+="$run_sleeps "
                agree_qps[$server/$generator]+="$run_qps "
                agree_busy[$server/$generator]+="${run_server%%%*} "
                agree_generator[$server/$generator]+="${run_generator%\%} "
            done
        done
        quota_off
        taskset -a -p -c "$all_cpus" "${server_pid[$server]}" >/dev/null
    done
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
echo
echo "unbound $("$UNBOUND" -V | sed -n 's/^Version //p') vs edgekit $("$EDGEKIT" --version | awk '{print $2}'), $COLD_THREADS threads each (cold and cached); NSD $("$NSD" -v 2>&1 | sed -n 's/^NSD version //p')"
echo "cold batch ($total_queries distinct questions, $COLD_CONCURRENCY outstanding, medians of $COLD_RUNS fresh starts; batch = first send to last reply):"
for server in unbound edgekit; do
    # Per-run p99s, medianed: one stall that holds every question in flight shows here first.
    cold_p99s=$(printf '%s\n' ${cold_latency[$server]} | awk -F/ '{print $2}')
    echo "  $server: batch $(median ${cold_wall[$server]}) s (runs: ${cold_wall[$server]}), latency p99 $(median $cold_p99s) ms (median of runs), process wall $(median ${cold_process[$server]}) s, server CPU $(median ${cold_cpu[$server]}) s (runs: ${cold_cpu[$server]}), context switches $(median ${cold_switches[$server]}), resident memory +$(median ${cold_rss[$server]}) KiB, NSD CPU $(median ${cold_authority[$server]}) s, generator CPU $(median ${cold_generator[$server]}) s, upstream queries $(median ${cold_upstream[$server]}), lost ${cold_lost[$server]}"
done
# Each fresh start pairs the two servers, so the per-run ratio is free of the drift between
# runs; its median's interval says whether this many runs show a difference at all.
cold_ratios=$(paired_ratios "${cold_wall[edgekit]}" "${cold_wall[unbound]}")
echo "  per-run batch ratios edgekit/unbound: $cold_ratios($(median_with_interval "$cold_ratios"))"
cpu_ratios=$(paired_ratios "${cold_cpu[edgekit]}" "${cold_cpu[unbound]}")
echo "  per-run server CPU ratios edgekit/unbound: $cpu_ratios($(median_with_interval "$cpu_ratios"))"
echo "  ratio edgekit/unbound: batch $(ratio "$(median ${cold_wall[edgekit]})" "$(median ${cold_wall[unbound]})"), server CPU $(ratio "$(median ${cold_cpu[edgekit]})" "$(median ${cold_cpu[unbound]})"), NSD CPU $(ratio "$(median ${cold_authority[edgekit]})" "$(median ${cold_authority[unbound]})"), upstream $(ratio "$(median ${cold_upstream[edgekit]})" "$(median ${cold_upstream[unbound]})")"
if ((ROUNDS > 0)); then
echo "cached ($CONCURRENCY outstanding over $SOCKETS sockets, ${DURATION}s x $ROUNDS rounds, medians):"
for server in unbound edgekit; do
    echo "  $server: dnsperf $(median ${perf_qps[$server]}) qps; edgekit bench dns $(median ${bench_qps[$server]}) qps, p99 $(median ${bench_p99[$server]}) ms"
done
echo "  ratio edgekit/unbound qps: dnsperf $(ratio "$(median ${perf_qps[edgekit]})" "$(median ${perf_qps[unbound]})"), edgekit bench dns $(ratio "$(median ${bench_qps[edgekit]})" "$(median ${bench_qps[unbound]})")"
echo "  ratio edgekit/unbound p99: $(ratio "$(median ${bench_p99[edgekit]})" "$(median ${bench_p99[unbound]})")"
echo "load generators, edgekit bench dns / dnsperf, unpinned (generator shares the servers' cores; not the agreement check): on unbound $(ratio "$(median ${bench_qps[unbound]})" "$(median ${perf_qps[unbound]})"), on edgekit $(ratio "$(median ${bench_qps[edgekit]})" "$(median ${perf_qps[edgekit]})")"
fi
if [[ $AGREE == 1 ]] && ((AGREE_ROUNDS > 0)); then
    limit=100
    [[ -n $AGREE_CPU_QUOTA ]] && limit=$AGREE_CPU_QUOTA
    echo "agreement check (servers with $THREADS thread(s) on CPU 0${AGREE_CPU_QUOTA:+, capped at $AGREE_CPU_QUOTA% of it}; generator on CPU 1, $CONCURRENCY outstanding over $SOCKETS sockets, medians of $AGREE_ROUNDS):"
    for server in unbound edgekit; do
        p=$(median ${agree_qps[$server/dnsperf]}); b=$(median ${agree_qps[$server/edgekit]})
        # A round's two runs are back to back, so their ratio cancels the drift between rounds
        # that the ratio of each generator's medians keeps.
        round_ratios=$(paired_ratios "${agree_qps[$server/edgekit]}" "${agree_qps[$server/dnsperf]}" %.3f)
        r=$(median $round_ratios)
        verdict=$(awk -v r="$r" 'BEGIN {print (r >= 0.9 && r <= 1.1) ? "within 10%" : "NOT within 10%"}')
        interval=$(median_interval $round_ratios)
        echo "  $server: dnsperf $p qps, edgekit bench dns $b qps; median per-round ratio $(printf '%.2f' "$r") ($verdict; 95% interval for the median ${interval:-none: too few rounds to judge; AGREE_ROUNDS=9 or more gives one, and on a noisy VM 21 were needed}), per-round ratios $round_ratios, ratio of medians $(ratio "$b" "$p"); server busy $(median ${agree_busy[$server/dnsperf]})% / $(median ${agree_busy[$server/edgekit]})% of one core (limit $limit%), generator busy $(median ${agree_generator[$server/dnsperf]})% / $(median ${agree_generator[$server/edgekit]})% of its core, server slept $(median ${agree_sleeps[$server/dnsperf]}) / $(median ${agree_sleeps[$server/edgekit]}) times per 1000 queries"
        awk -v s="$(median ${agree_busy[$server/dnsperf]})" -v t="$(median ${agree_busy[$server/edgekit]})" -v limit="$limit" 'BEGIN {
            if (s < 0.95 * limit || t < 0.95 * limit)
                print "    the server was not the bottleneck under both generators (below 95% of its limit): a generator measured itself"
            else
                print "    the server was the bottleneck under both generators: a fair agreement check"
        }'
    done
fi
