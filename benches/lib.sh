# Shell helpers shared by the comparison scripts (sourced, not run).

# The median of numbers given as arguments, word-split, so a space-separated list held in one
# string (an associative array's value) works as well as an array.
# shellcheck disable=SC2048,SC2086
median() { printf '%s\n' $* | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

# A distribution-free interval for the median of the numbers given (as for `median`): "low-high",
# the k-th smallest and k-th largest, with k the largest rank for which the chance that fewer
# than k of n draws fall below the true median is at most 2.5% (so the interval covers it with
# at least 95%), or nothing with fewer than 6 numbers, too few for one. It needs no assumption about
# how the numbers are spread, which on a shared VM (occasional slow runs) none would justify.
# shellcheck disable=SC2048,SC2086
median_interval() {
    printf '%s\n' $* | sort -g | awk '{v[NR] = $1} END {
        n = NR; cumulative = 0; log_term = -n * log(2); k = 0
        # cumulative = P(Binomial(n, 1/2) <= j), built one term at a time; the terms are kept
        # as logarithms because 0.5^n underflows to 0 past about a thousand runs.
        for (j = 0; j < n; j++) {
            cumulative += exp(log_term)
            if (cumulative > 0.025) break
            k = j + 1
            log_term += log((n - j) / (j + 1))
        }
        if (k >= 1) print v[k] "-" v[n + 1 - k]
    }'
}

# Where a ratio's median interval ("low-high", from median_interval) lies against 1: "below 1",
# "above 1", "spans 1" (no difference shown), or "too few runs for an interval".
interval_verdict() {
    [[ -n $1 ]] || { echo "too few runs for an interval"; return; }
    awk -v range="$1" 'BEGIN {split(range, r, "-"); print (r[2] < 1) ? "below 1" : (r[1] > 1) ? "above 1" : "spans 1: no difference shown"}'
}

# The per-run ratios of two lists given as strings (as for `median`) whose n-th numbers come from
# the same run, "a1/b1 a2/b2 ...", each printed with FORMAT (%.2f unless given); a pair whose
# divisor is 0 is left out.
# shellcheck disable=SC2086
paired_ratios() {
    paste -d' ' <(printf '%s\n' $1) <(printf '%s\n' $2) |
        awk -v format="${3:-%.2f}" '$2 > 0 {printf format " ", $1 / $2}'
}

# "median M; 95% interval for the median LOW-HIGH: VERDICT" for the ratios given (as for
# `median`).
median_with_interval() {
    local interval
    interval=$(median_interval "$@")
    echo "median $(median "$@"); 95% interval for the median ${interval:-none}: $(interval_verdict "$interval")"
}
