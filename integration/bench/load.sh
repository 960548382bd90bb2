#!/usr/bin/env bash
# Load test of upstream_oauth in a real Caddy, on loopback, against provider
# emulators and a backend (integration/bench/emulators). One invocation measures, and
# prints as ratios:
#
#   1. throughput and latency through upstream_oauth + reverse_proxy against
#      the same Caddy with a static `header_up Authorization` (alternating
#      wrk runs; the median of the pairs' ratios);
#   2. cold starts: COLD_N requests at once on a source with no token, its
#      provider taking 500 ms to answer (token requests counted);
#   3. the renewal boundary: tokens that live 3 s from a provider that takes
#      500 ms, against the steady state (tokens that live an hour);
#   4. many tenants: TENANTS tenants picked at random by wrk (a Lua script
#      sets X-Tenant), upstream_oauth with per-request credentials from a
#      map, against the same Caddy where the map gives each tenant a static
#      header_up Authorization (alternating pairs, as in 1).
#
# Needs: Go, wrk (apt-get install -y wrk). Builds Caddy with the module
# (xcaddy, about 1.5 min) unless CADDY_BIN names one already built.
# Tunables (environment): PAIRS=11 PAIR_SECONDS=4 WRK_THREADS=2 WRK_CONNS=32
# COLD_RUNS=3 COLD_N=1000 RENEW_RUNS=2 RENEW_SECONDS=10 TENANTS=1000
# TENANT_PAIRS=PAIRS. Takes about 3
# minutes with the defaults, plus the build.
set -euo pipefail
cd "$(dirname "$0")/.." # the integration module
[ -d /usr/local/go/bin ] && export PATH="/usr/local/go/bin:$PATH"

PAIRS=${PAIRS:-11}
PAIR_SECONDS=${PAIR_SECONDS:-4}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-32}
COLD_RUNS=${COLD_RUNS:-3}
COLD_N=${COLD_N:-1000}
RENEW_RUNS=${RENEW_RUNS:-2}
RENEW_SECONDS=${RENEW_SECONDS:-10}
TENANTS=${TENANTS:-1000}
TENANT_PAIRS=${TENANT_PAIRS:-$PAIRS}

if ! command -v wrk >/dev/null; then
	echo "wrk not found; install it with: apt-get install -y wrk" >&2
	exit 1
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/upstream-oauth-load.XXXXXX")
EMU_PID= CADDY_PID=
cleanup() {
	local pid rc
	if [ -n "$CADDY_PID" ] && ! kill -0 "$CADDY_PID" 2>/dev/null; then
		rc=0; wait "$CADDY_PID" || rc=$?
		echo "Caddy had exited by itself, status $rc" >&2
		CADDY_PID=
	fi
	for pid in $CADDY_PID $EMU_PID; do # only the processes this script started
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	if [ -n "${KEEP_WORK:-}" ]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

say() { printf '%s\n' "$*"; }
# calc EXPR: floating point arithmetic with awk.
calc() { awk "BEGIN { printf \"%.3f\", $* }"; }
# median of the numbers given as arguments.
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# field NAME LINE: the value of NAME=value in LINE.
field() { sed -n "s/.*[ ]$1=\([^ ]*\).*/\1/p" <<<" $2"; }
# count NAME: token requests of emulator NAME so far.
count() { curl -fsS --max-time 5 "$CONTROL_URL/counts" | awk -v n="$1" '$1 == n { print $2 }'; }

# --- build -------------------------------------------------------------------
if [ -n "${CADDY_BIN:-}" ]; then
	CADDY=$CADDY_BIN
else
	say "building Caddy v2.11.9 with the module (xcaddy) ..."
	CADDY=$WORK/caddy
	timeout 900 go tool xcaddy build v2.11.9 --output "$CADDY" \
		--with github.com/caddy-upstream-oauth/upstream_oauth@v0.0.0-00010101000000-000000000000=.. \
		>"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
fi
go build -o "$WORK/emulators" ./bench/emulators
go build -o "$WORK/burst" ./bench/burst

# --- emulators and Caddy ----------------------------------------------------
"$WORK/emulators" -env "$WORK/env" -ports 6 -tenants "$TENANTS" >"$WORK/emulators.log" 2>&1 &
EMU_PID=$!
for _ in $(seq 100); do [ -s "$WORK/env" ] && break; sleep 0.1; done
[ -s "$WORK/env" ] || { cat "$WORK/emulators.log"; exit 1; }
# shellcheck disable=SC1091
. "$WORK/env"

read -r P_STATIC P_OAUTH P_RENEW P_COLD P_TSTATIC P_TOAUTH <<<"$PORTS"

oauth_block() { # name token_url
	cat <<EOF
	upstream_oauth 1nce {
		name $1
		token_url $2
		username $CLIENT_ID
		password $CLIENT_SECRET
	}
EOF
}
{
	cat <<EOF
{
	admin off
	persist_config off
	auto_https off
	grace_period 1s
	storage file_system $WORK/data
	log {
		output file $WORK/caddy.log
		level INFO
	}
}
http://127.0.0.1:$P_STATIC {
	reverse_proxy $BACKEND_URL {
		header_up Authorization "Bearer $STATIC_TOKEN"
	}
}
http://127.0.0.1:$P_OAUTH {
$(oauth_block steady "$STEADY_TOKEN_URL")
	reverse_proxy $BACKEND_URL
}
http://127.0.0.1:$P_RENEW {
$(oauth_block renew "$RENEW_TOKEN_URL")
	reverse_proxy $BACKEND_URL
}
http://127.0.0.1:$P_COLD {
EOF
	# One source per cold run (a path each), so that each run starts cold.
	for i in $(seq "$COLD_RUNS"); do
		printf '\thandle /cold%d {\n%s\n\t\treverse_proxy %s\n\t}\n' "$i" \
			"$(oauth_block "cold$i" "$COLD_TOKEN_URL" | sed 's/^/\t/')" "$BACKEND_URL"
	done
	printf '}\n'
	# Many tenants: the same map from X-Tenant, to a static header, or to
	# the tenant's credentials.
	printf 'http://127.0.0.1:%s {\n\tmap {http.request.header.X-Tenant} {tenant_auth} {\n' "$P_TSTATIC"
	awk '{ printf "\t\t%s \"Bearer %s\"\n", $1, $2 }' "$TENANT_TOKENS"
	printf '\t\tdefault ""\n\t}\n\treverse_proxy %s {\n\t\theader_up Authorization {tenant_auth}\n\t}\n}\n' "$TENANT_BACKEND_URL"
	printf 'http://127.0.0.1:%s {\n\tmap {http.request.header.X-Tenant} {tenant_id} {tenant_secret} {\n' "$P_TOAUTH"
	awk '{ t = $1; sub(/^t/, "", t); printf "\t\t%s client-t%s secret-t%s-Kd9\n", $1, t, t }' "$TENANT_TOKENS"
	printf '\t\tdefault "" ""\n\t}\n\tupstream_oauth {\n\t\tname tenants\n\t\ttoken_url %s\n\t\tclient_id {tenant_id}\n\t\tclient_secret {tenant_secret}\n\t\tclient_auth body\n\t}\n\treverse_proxy %s\n}\n' "$TENANT_TOKEN_URL" "$TENANT_BACKEND_URL"
} >"$WORK/Caddyfile"

HOME=$WORK XDG_CONFIG_HOME=$WORK/config XDG_DATA_HOME=$WORK/data \
	"$CADDY" run --config "$WORK/Caddyfile" --adapter caddyfile >"$WORK/caddy.out" 2>&1 &
CADDY_PID=$!
STATIC=http://127.0.0.1:$P_STATIC/api
OAUTH=http://127.0.0.1:$P_OAUTH/api
RENEW=http://127.0.0.1:$P_RENEW/api
ready=
for _ in $(seq 100); do
	if "$WORK/burst" -n 1 -timeout 2s "$STATIC" >/dev/null 2>&1; then ready=1; break; fi
	sleep 0.1
done
[ -n "$ready" ] || { cat "$WORK/caddy.out"; exit 1; }

cat >"$WORK/report.lua" <<'EOF'
done = function(summary, latency, requests)
	local e = summary.errors
	io.write(string.format(
		"RESULT rps=%.1f requests=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d non2xx=%d sockerr=%d\n",
		summary.requests / (summary.duration / 1e6), summary.requests,
		latency:percentile(50), latency:percentile(90), latency:percentile(99),
		latency:percentile(99.9), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
EOF
# tenants.lua: each request for a tenant picked at random.
{
	printf 'local n = %d\nmath.randomseed(os.time())\n' "$TENANTS"
	printf 'request = function()\n\treturn wrk.format("GET", "/api", {["X-Tenant"] = "t" .. math.random(0, n - 1)})\nend\n'
	cat "$WORK/report.lua"
} >"$WORK/tenants.lua"
# caddy_alive: fails, showing on stderr the end of Caddy's output and log,
# once its process is gone (cleanup reports its exit status).
caddy_alive() {
	kill -0 "$CADDY_PID" 2>/dev/null && return 0
	{
		say "  !! Caddy (pid $CADDY_PID) is gone; the end of its output and log:"
		tail -n 40 "$WORK/caddy.out" | sed 's/^/    /'
		tail -n 20 "$WORK/caddy.log" 2>/dev/null | sed 's/^/    /'
	} >&2
	return 1
}
# caddy_ticks: CPU time Caddy has used so far (user + system), in clock ticks.
caddy_ticks() { caddy_alive; awk '{ print $14 + $15 }' "/proc/$CADDY_PID/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
# run_wrk SECONDS URL [SCRIPT]: one wrk run; prints its RESULT line, with
# the CPU time Caddy spent per request (cpu_us), which the machine's other
# load disturbs less than the throughput.
run_wrk() {
	local out t0 t1 res
	t0=$(caddy_ticks)
	out=$(timeout $(($1 + 30)) wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$1s" --timeout 10s -s "${3:-$WORK/report.lua}" "$2")
	t1=$(caddy_ticks)
	res=$(grep '^RESULT' <<<"$out" | sed 's/^RESULT //')
	echo "$res cpu_us=$(calc "($t1 - $t0) * $TICK_US / $(field requests "$res")")"
}
check_ok() { # label result: every answer 2xx, no socket errors
	if [ "$(field non2xx "$2")" != 0 ] || [ "$(field sockerr "$2")" != 0 ]; then
		say "  !! $1: $(field non2xx "$2") non-2xx answers, $(field sockerr "$2") socket errors"
		FAILED=1
	fi
}
ms() { calc "$1 / 1000"; }
FAILED=

say "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(go version | cut -d' ' -f3), Caddy $("$CADDY" version | cut -d' ' -f1), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
say "wrk -t$WRK_THREADS -c$WRK_CONNS; backend and emulators in one process; everything on 127.0.0.1"

# --- 1. throughput: alternating pairs ----------------------------------------
say ""
say "== 1. throughput: upstream_oauth vs static header_up ($PAIRS pairs of ${PAIR_SECONDS}s runs, alternating order)"
run_wrk 2 "$STATIC" >/dev/null
run_wrk 2 "$OAUTH" >/dev/null
ratios=() cpu_ratios=() s_rps=() o_rps=() s_p50=() o_p50=() s_p99=() o_p99=() s_cpu=() o_cpu=()
for i in $(seq "$PAIRS"); do
	if [ $((i % 2)) = 1 ]; then
		s=$(run_wrk "$PAIR_SECONDS" "$STATIC"); o=$(run_wrk "$PAIR_SECONDS" "$OAUTH")
	else
		o=$(run_wrk "$PAIR_SECONDS" "$OAUTH"); s=$(run_wrk "$PAIR_SECONDS" "$STATIC")
	fi
	check_ok static "$s"; check_ok upstream_oauth "$o"
	r=$(calc "$(field rps "$o") / $(field rps "$s")")
	ratios+=("$r")
	cpu_ratios+=("$(calc "$(field cpu_us "$o") / $(field cpu_us "$s")")")
	s_cpu+=("$(field cpu_us "$s")") o_cpu+=("$(field cpu_us "$o")")
	s_rps+=("$(field rps "$s")") o_rps+=("$(field rps "$o")")
	s_p50+=("$(field p50_us "$s")") o_p50+=("$(field p50_us "$o")")
	s_p99+=("$(field p99_us "$s")") o_p99+=("$(field p99_us "$o")")
	say "  pair $i: static $(field rps "$s") req/s, p50 $(ms "$(field p50_us "$s")") ms, p99 $(ms "$(field p99_us "$s")") ms, Caddy CPU $(field cpu_us "$s") us/req | upstream_oauth $(field rps "$o") req/s, p50 $(ms "$(field p50_us "$o")") ms, p99 $(ms "$(field p99_us "$o")") ms, Caddy CPU $(field cpu_us "$o") us/req | ratio $r"
done
TP_RATIO=$(median "${ratios[@]}")
CPU_RATIO=$(median "${cpu_ratios[@]}")
say "  median: static $(median "${s_rps[@]}") req/s, upstream_oauth $(median "${o_rps[@]}") req/s"
say "  throughput ratio upstream_oauth/static (median of pairs): $TP_RATIO  (min $(printf '%s\n' "${ratios[@]}" | sort -g | head -1), max $(printf '%s\n' "${ratios[@]}" | sort -g | tail -1))"
say "  latency ratio p50: $(calc "$(median "${o_p50[@]}") / $(median "${s_p50[@]}")")  p99: $(calc "$(median "${o_p99[@]}") / $(median "${s_p99[@]}")")"
say "  Caddy CPU per request: static $(median "${s_cpu[@]}") us, upstream_oauth $(median "${o_cpu[@]}") us; ratio (median of pairs) $CPU_RATIO"

# --- 2. cold start -----------------------------------------------------------
say ""
say "== 2. cold start: $COLD_N requests at once on a source with no token (provider answers in 500 ms)"
cold_tokens=()
for i in $(seq "$COLD_RUNS"); do
	before=$(count cold)
	b=$(timeout 120 "$WORK/burst" -n "$COLD_N" "http://127.0.0.1:$P_COLD/cold$i") || { say "  !! run $i: $b"; FAILED=1; }
	after=$(count cold)
	cold_tokens+=($((after - before)))
	say "  run $i: $b token_requests=$((after - before))"
done
say "  token requests per $COLD_N cold requests: ${cold_tokens[*]}"

# --- 3. renewal boundary -----------------------------------------------------
say ""
say "== 3. renewal boundary: tokens live 3s, provider answers in 500ms; steady = tokens that live 1h"
st_p50=() st_p99=() st_p999=() st_max=() rn_p50=() rn_p99=() rn_p999=() rn_max=() rn_tokens=()
for i in $(seq "$RENEW_RUNS"); do
	st=$(run_wrk "$RENEW_SECONDS" "$OAUTH")
	check_ok steady "$st"
	# The renew source lets an unused token lapse: one request gets it a
	# token (waiting 500 ms, outside the measurement), then the run.
	"$WORK/burst" -n 1 "$RENEW" >/dev/null
	before=$(count renew)
	rn=$(run_wrk "$RENEW_SECONDS" "$RENEW")
	after=$(count renew)
	check_ok renewal "$rn"
	rn_tokens+=($((after - before)))
	st_p50+=("$(field p50_us "$st")") st_p99+=("$(field p99_us "$st")") st_p999+=("$(field p999_us "$st")") st_max+=("$(field max_us "$st")")
	rn_p50+=("$(field p50_us "$rn")") rn_p99+=("$(field p99_us "$rn")") rn_p999+=("$(field p999_us "$rn")") rn_max+=("$(field max_us "$rn")")
	say "  run $i steady:  $(field rps "$st") req/s  p50 $(ms "$(field p50_us "$st")")  p99 $(ms "$(field p99_us "$st")")  p99.9 $(ms "$(field p999_us "$st")")  max $(ms "$(field max_us "$st")") ms"
	say "  run $i renewal: $(field rps "$rn") req/s  p50 $(ms "$(field p50_us "$rn")")  p99 $(ms "$(field p99_us "$rn")")  p99.9 $(ms "$(field p999_us "$rn")")  max $(ms "$(field max_us "$rn")") ms  renewals (token requests) $((after - before)) in ${RENEW_SECONDS}s"
done
R_P50=$(calc "$(median "${rn_p50[@]}") / $(median "${st_p50[@]}")")
R_P99=$(calc "$(median "${rn_p99[@]}") / $(median "${st_p99[@]}")")
R_P999=$(calc "$(median "${rn_p999[@]}") / $(median "${st_p999[@]}")")
RN_MAX=$(printf '%s\n' "${rn_max[@]}" | sort -g | tail -1)
ST_MAX=$(printf '%s\n' "${st_max[@]}" | sort -g | tail -1)
say "  renewal/steady: p50 $R_P50  p99 $R_P99  p99.9 $R_P999  max $(calc "$RN_MAX / $ST_MAX") (renewal max $(ms "$RN_MAX") ms vs steady max $(ms "$ST_MAX") ms; the provider takes 500 ms)"

# --- 4. many tenants ---------------------------------------------------------
say ""
say "== 4. many tenants: $TENANTS tenants at random (wrk Lua); upstream_oauth with per-request credentials vs map to a static header_up ($TENANT_PAIRS pairs)"
TSTATIC=http://127.0.0.1:$P_TSTATIC/api
TOAUTH=http://127.0.0.1:$P_TOAUTH/api
tcount() { curl -fsS --max-time 5 "$CONTROL_URL/tenant-counts" | awk -v n="$1" '$1 == n { print $2 }'; }
run_wrk 3 "$TOAUTH" "$WORK/tenants.lua" >/dev/null # every tenant gets its token
run_wrk 2 "$TSTATIC" "$WORK/tenants.lua" >/dev/null
warm_tokens=$(tcount tenant_token_requests)
t_ratios=() t_cpu=()
for i in $(seq "$TENANT_PAIRS"); do
	if [ $((i % 2)) = 1 ]; then
		s=$(run_wrk "$PAIR_SECONDS" "$TSTATIC" "$WORK/tenants.lua"); o=$(run_wrk "$PAIR_SECONDS" "$TOAUTH" "$WORK/tenants.lua")
	else
		o=$(run_wrk "$PAIR_SECONDS" "$TOAUTH" "$WORK/tenants.lua"); s=$(run_wrk "$PAIR_SECONDS" "$TSTATIC" "$WORK/tenants.lua")
	fi
	check_ok "tenants static" "$s"; check_ok "tenants upstream_oauth" "$o"
	r=$(calc "$(field rps "$o") / $(field rps "$s")")
	t_ratios+=("$r")
	t_cpu+=("$(calc "$(field cpu_us "$o") / $(field cpu_us "$s")")")
	say "  pair $i: static map $(field rps "$s") req/s, Caddy CPU $(field cpu_us "$s") us/req | upstream_oauth $(field rps "$o") req/s, Caddy CPU $(field cpu_us "$o") us/req | ratio $r"
done
T_RATIO=$(median "${t_ratios[@]}")
T_CPU=$(median "${t_cpu[@]}")
say "  throughput ratio (median of pairs): $T_RATIO  (min $(printf '%s\n' "${t_ratios[@]}" | sort -g | head -1), max $(printf '%s\n' "${t_ratios[@]}" | sort -g | tail -1)); Caddy CPU per request ratio $T_CPU"
say "  tenant token requests: $((warm_tokens - TENANTS)) by the gateway while warming (and $TENANTS for the static map's tokens), $(( $(tcount tenant_token_requests) - warm_tokens )) during the pairs; cross-tenant tokens $(tcount tenant_cross), unknown $(tcount tenant_unknown)"
[ "$(tcount tenant_cross)" = 0 ] || { say "  !! requests carried another tenant's token"; FAILED=1; }

# --- summary -----------------------------------------------------------------
say ""
say "== summary (ratios)"
say "  throughput upstream_oauth / static header_up (median of $PAIRS pairs): $TP_RATIO   target >= 0.99"
say "  Caddy CPU per request upstream_oauth / static header_up (median of pairs): $CPU_RATIO"
say "  cold start: token requests for $COLD_N concurrent requests: ${cold_tokens[*]}   target 1"
say "  renewal boundary p99 / steady p99: $R_P99   max $(ms "$RN_MAX") ms (steady $(ms "$ST_MAX") ms)   target: within noise, no wait for the provider (< 500 ms)"
say "  token requests during renewal runs: ${rn_tokens[*]} (${RENEW_SECONDS}s each)"
say "  many tenants ($TENANTS at random): throughput upstream_oauth / map to static header_up (median of $TENANT_PAIRS pairs): $T_RATIO   target >= 0.97; Caddy CPU per request $T_CPU"
say ""
say "emulators: $(curl -fsS --max-time 5 "$CONTROL_URL/counts" | tr '\n' ' ')"
kill "$EMU_PID" 2>/dev/null || true
if ! wait "$EMU_PID"; then
	say "the emulators found malformed token requests:"; grep 'malformed' "$WORK/emulators.log" | head -5
	FAILED=1
fi
EMU_PID=
if grep -q '"level":"error"' "$WORK/caddy.log" 2>/dev/null; then
	say "caddy logged errors:"; grep '"level":"error"' "$WORK/caddy.log" | head -5
fi
[ -z "$FAILED" ] || { say "SOME REQUESTS FAILED (see above)"; exit 1; }
