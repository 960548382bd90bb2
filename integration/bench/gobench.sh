#!/usr/bin/env bash
# The Go benchmarks of upstream_oauth, in alternating rounds, with ratios.
#
# Each round runs every request path and token read benchmark once, so a
# handler and its baseline run moments apart; the ratio of each round is
# taken, and the median of the rounds' ratios is printed. Then the growth
# benchmarks run once: cache.Source alone (BenchmarkSources) and a whole
# gateway config (BenchmarkGatewaySources).
#
# Tunables (environment): ROUNDS=5 BENCHTIME=1s GROWTH=1 (0 skips growth).
# Takes about 2 minutes with the defaults.
set -euo pipefail
cd "$(dirname "$0")/../.." # the repository root
[ -d /usr/local/go/bin ] && export PATH="/usr/local/go/bin:$PATH"
ROUNDS=${ROUNDS:-5}
BENCHTIME=${BENCHTIME:-1s}
GROWTH=${GROWTH:-1}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/upstream-oauth-gobench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

go test -c -o "$WORK/root.test" .
go test -c -o "$WORK/cache.test" ./cache
(cd integration && go test -c -o "$WORK/integration.test" . && go test -c -o "$WORK/bench.test" ./bench)

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(go version | cut -d' ' -f3-)"
echo "rounds: $ROUNDS, -benchtime=$BENCHTIME"
for r in $(seq "$ROUNDS"); do
	{
		"$WORK/root.test" -test.run=NONE -test.bench='^BenchmarkRequestPath' -test.benchmem -test.benchtime="$BENCHTIME"
		(cd integration/bench && "$WORK/bench.test" -test.run=NONE -test.bench='^BenchmarkTokenRead$' -test.benchmem -test.benchtime="$BENCHTIME")
	} 2>&1 | grep '^Benchmark' | sed "s/^/$r /" >>"$WORK/rounds.txt"
	echo "round $r done"
done

# ratio lines: "label numerator denominator": ns/op of numerator over that
# of denominator, per round, then the median.
awk '
function median(a, n,    i, j, t) {
	for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
	return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
FNR == NR {
	name = $2; sub(/-[0-9]+$/, "", name)
	ns[$1, name] = $4; bytes[name] = $6; allocs[name] = $8
	if (!(name in seen)) { seen[name] = 1; order[++names] = name }
	if ($1 > rounds) rounds = $1
	next
}
{ pairs[++np] = $0 }
END {
	printf "\n%-66s %10s %8s %10s\n", "benchmark (median of rounds)", "ns/op", "B/op", "allocs/op"
	for (k = 1; k <= names; k++) {
		n = 0; for (r = 1; r <= rounds; r++) if ((r, order[k]) in ns) v[++n] = ns[r, order[k]]
		printf "%-66s %10.1f %8s %10s\n", order[k], median(v, n), bytes[order[k]], allocs[order[k]]
	}
	printf "\n%-70s %8s   %s\n", "ratio", "median", "per round"
	for (p = 1; p <= np; p++) {
		split(pairs[p], f, " ")
		n = 0; list = ""
		for (r = 1; r <= rounds; r++) if (((r, f[2]) in ns) && ((r, f[3]) in ns)) {
			v[++n] = ns[r, f[2]] / ns[r, f[3]]; list = list sprintf(" %.2f", v[n])
		}
		printf "%-70s %8.2f  %s\n", f[1], median(v, n), list
	}
}' "$WORK/rounds.txt" - <<'EOF'
handler/const_header(serial) BenchmarkRequestPath/upstream_oauth BenchmarkRequestPath/const_header
handler_no_renew_on/const_header(serial) BenchmarkRequestPath/upstream_oauth_no_renew_on BenchmarkRequestPath/const_header
handler/const_header(parallel) BenchmarkRequestPathParallel/upstream_oauth BenchmarkRequestPathParallel/const_header
handler_no_renew_on/const_header(parallel) BenchmarkRequestPathParallel/upstream_oauth_no_renew_on BenchmarkRequestPathParallel/const_header
ReuseTokenSource/Source.Get(serial:x_faster) BenchmarkTokenRead/serial/oauth2.ReuseTokenSource BenchmarkTokenRead/serial/Source.Get
ReuseTokenSource/Source.Get(parallel:x_faster) BenchmarkTokenRead/parallel/oauth2.ReuseTokenSource BenchmarkTokenRead/parallel/Source.Get
EOF

if [ "$GROWTH" != 0 ]; then
	echo
	echo "growth: cache.Source alone (1 KiB tokens)"
	(cd cache && "$WORK/cache.test" -test.run=NONE -test.bench='^BenchmarkSources$' -test.benchmem -test.benchtime=100000x) 2>&1 | grep '^Benchmark'
	echo "growth: a gateway config with n tenants (1 KiB tokens)"
	(cd integration && "$WORK/integration.test" -test.run=NONE -test.bench='^BenchmarkGatewaySources$' -test.benchtime=1x) 2>&1 | grep '^Benchmark'
fi
