# Shell helpers shared by the comparison scripts (sourced, not run).

# The median of numbers given as arguments, word-split, so a space-separated list held in one
# string (an associative array's value) works as well as an array.
# shellcheck disable=SC2048,SC2086
median() { printf '%s\n' $* | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
