#!/usr/bin/env bash
# The request path benchmarks of an earlier commit and of the working tree,
# in one run: ROUNDS (default 5) alternating rounds of BenchmarkRequestPath
# and BenchmarkRequestPathParallel, each build's medians, and the median of
# the per-round ratios to const_header.
#
#   integration/bench/compare.sh <commit>
set -euo pipefail
base=${1:?usage: compare.sh <commit>}
cd "$(dirname "$0")/../.." # the repository root
[ -d /usr/local/go/bin ] && export PATH="/usr/local/go/bin:$PATH"
R=${ROUNDS:-5}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/upstream-oauth-compare.XXXXXX")
trap 'git worktree remove --force "$WORK/before" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
git worktree add -q --detach "$WORK/before" "$base"
(cd "$WORK/before" && go test -c -o "$WORK/before.test" .)
go test -c -o "$WORK/after.test" .
out=$WORK/rounds.txt
for r in $(seq "$R"); do
	for v in before after; do
		"$WORK/$v.test" -test.run=NONE -test.bench='^BenchmarkRequestPath(Parallel)?$' -test.benchmem -test.benchtime=1s 2>/dev/null |
			grep '^Benchmark' | sed "s/^/$r $v /" >>"$out"
	done
	echo "round $r done"
done
awk -v R="$R" '
function median(a, n,    i, j, t) {
	for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
	return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{ name = $3; sub(/-[0-9]+$/, "", name); key = $2 " " name; ns[key, $1] = $5; b[key] = $7; al[key] = $9
  if (!(key in seen)) { seen[key] = 1; keys[++nk] = key } }
END {
	for (k = 1; k <= nk; k++) {
		n = 0; for (r = 1; r <= R; r++) if ((keys[k], r) in ns) v[++n] = ns[keys[k], r]
		printf "%-66s %8.1f ns/op %6s B/op %4s allocs/op\n", keys[k], median(v, n), b[keys[k]], al[keys[k]]
	}
	print ""
	split("before after", vs, " ")
	for (i = 1; i <= 2; i++) for (m = 1; m <= 2; m++) for (h = 1; h <= 2; h++) {
		bench = (m == 1) ? "BenchmarkRequestPath" : "BenchmarkRequestPathParallel"
		hn = (h == 1) ? "upstream_oauth" : "upstream_oauth_no_renew_on"
		n = 0
		for (r = 1; r <= R; r++) { a = ns[vs[i] " " bench "/" hn, r]; c = ns[vs[i] " " bench "/const_header", r]; if (a && c) v[++n] = a / c }
		printf "%-6s %-30s %-28s / const_header: %.2f\n", vs[i], bench, hn, median(v, n)
	}
}' "$out"
