#!/usr/bin/env bash
# Soak test of the token server on loopback: a steady load below saturation
# for a fixed time, watching for errors and memory growth.
#
# Starts a release build with the throwaway config of bench/lib.sh, then:
#   1. probes the peak rate of GET /token (refresh token as Basic password)
#      with a short, saturating wrk run;
#   2. holds ~80% of that peak for SECONDS (default 60). wrk is closed-loop,
#      so the rate is paced by a wrk Lua `delay()` hook: every connection
#      waits a fixed interval before each request, so the rate can never
#      exceed connections * 1000 / interval_ms (wrk2 is not in Debian);
#   3. samples the server's RSS (VmRSS) and open file descriptors at the
#      start, every 10 s and at the end. RSS rises while the connections
#      open and their buffers are allocated; "flat" is judged from the first
#      10 s sample, taken under steady load, to the end.
# It prints requests, non-2xx responses and socket errors (target: 0), the
# server's own count of /token outcomes, RSS start/end (target: flat), and
# req/s, then PASS or FAIL. Traffic goes to 127.0.0.1 only, and every wrk run
# is bounded by its duration and a hard timeout.
#
# Usage: bench/soak.sh [SECONDS=60]
# Env:   SOAK_PROBE_SECONDS (5), SOAK_LOAD_PERCENT (80), SOAK_PACING_MS (20),
#        SOAK_RSS_GROWTH_LIMIT_KIB (8192): the RSS growth from the first sample
#        under load to the end that still counts as flat.
set -euo pipefail

duration=${1:-60}
probe_seconds=${SOAK_PROBE_SECONDS:-5}
load_percent=${SOAK_LOAD_PERCENT:-80}
pacing_ms=${SOAK_PACING_MS:-20}
rss_limit_kib=${SOAK_RSS_GROWTH_LIMIT_KIB:-8192}
threads=2
sample_every=10

case "$duration" in ''|*[!0-9]*) echo "usage: bench/soak.sh [SECONDS]" >&2; exit 2;; esac
[ "$duration" -ge 10 ] && [ "$duration" -le 3600 ] || { echo "soak: SECONDS must be 10..3600" >&2; exit 2; }

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_setup

refresh=$(bench_refresh_token)
basic_refresh="Authorization: Basic $(printf 'bench:%s' "$refresh" | base64 -w0)"
url="$base/token?$scope"
curl -fs -H "$basic_refresh" "$url" >/dev/null || { echo "soak: /token with the refresh token failed" >&2; exit 1; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status"; }
fds() { find "/proc/$server_pid/fd" -mindepth 1 -maxdepth 1 | wc -l; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k/1024 }'; }
# The server's own count of /token requests: "ok" ones, or all of them.
served() {
    curl -fs "$base/metrics" | awk -v o="$1" '
        index($0, "regauth_requests_total{endpoint=\"/token\",outcome=\"") == 1 {
            if (o == "all" || index($0, "outcome=\"" o "\"}") > 0) n += $2
        }
        END { print n+0 }'
}
# Field N of wrk's "Socket errors: connect A, read B, write C, timeout D" line.
socket_errors() {
    awk '/Socket errors/ { gsub(",", ""); print $4, $6, $8, $10 }' <<<"$1"
}

rss_idle=$(rss_kib)

# 1. Probe: saturate briefly with the same connection count as bench/run.sh.
probe=$(timeout $((probe_seconds + 30)) wrk -t"$threads" -c32 -d"${probe_seconds}s" -H "$basic_refresh" "$url")
peak=$(awk '/^Requests\/sec/ {printf "%d", $2}' <<<"$probe")
[ "${peak:-0}" -gt 0 ] || { echo "soak: the probe measured no throughput:" >&2; echo "$probe" >&2; exit 1; }

# 2. Steady load at load_percent of the peak, paced per connection.
target=$((peak * load_percent / 100))
connections=$(( (target * pacing_ms + 999) / 1000 ))
[ "$connections" -ge "$threads" ] || connections=$threads
ceiling=$((connections * 1000 / pacing_ms))
cat > "$work/pace.lua" <<LUA
-- Each connection waits ${pacing_ms} ms before every request.
function delay()
    return ${pacing_ms}
end
LUA

ok_before=$(served ok)
all_before=$(served all)
rss_start=$(rss_kib)
fds_start=$(fds)

echo "regauth soak: GET /token (refresh token as Basic password), ${duration}s, $(nproc) cores, $(date -u +%Y-%m-%d)"
echo "probe: wrk -t$threads -c32 -d${probe_seconds}s: peak $peak req/s"
echo "load:  target $target req/s (${load_percent}% of peak): wrk -t$threads -c$connections, ${pacing_ms} ms pacing per connection (hard ceiling $ceiling req/s, $((ceiling * duration)) requests)"
printf '  %-6s %12s %6s\n' "t" "RSS" "fds"
printf '  %-6s %12s %6s   (idle, before the probe)\n' "-" "$(mib "$rss_idle")" "-"

timeout $((duration + 30)) wrk -t"$threads" -c"$connections" -d"${duration}s" --latency \
    -s "$work/pace.lua" -H "$basic_refresh" "$url" >"$work/wrk.out" 2>&1 &
wrk_pid=$!
started=$(date +%s)
printf '  %-6s %12s %6s\n' "0s" "$(mib "$rss_start")" "$fds_start"
next=$sample_every
rss_steady=""
steady_at=""
while kill -0 "$wrk_pid" 2>/dev/null; do
    sleep 1
    elapsed=$(( $(date +%s) - started ))
    if [ "$elapsed" -ge "$next" ] && [ "$elapsed" -lt "$duration" ]; then
        rss_now=$(rss_kib)
        printf '  %-6s %12s %6s\n' "${elapsed}s" "$(mib "$rss_now")" "$(fds)"
        [ -n "$rss_steady" ] || { rss_steady=$rss_now; steady_at=$elapsed; }
        next=$((next + sample_every))
    fi
done
wrk_status=0
wait "$wrk_pid" || wrk_status=$?
rss_end=$(rss_kib)
fds_end=$(fds)
[ -n "$rss_steady" ] || { rss_steady=$rss_start; steady_at=0; }
printf '  %-6s %12s %6s   (end)\n' "$(( $(date +%s) - started ))s" "$(mib "$rss_end")" "$fds_end"

out=$(cat "$work/wrk.out")
[ "$wrk_status" -eq 0 ] || { echo "soak: wrk failed ($wrk_status):" >&2; echo "$out" >&2; exit 1; }
requests=$(awk '/requests in/ {print $1}' <<<"$out")
rps=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
non2xx=$(awk '/Non-2xx or 3xx responses/ {print $5}' <<<"$out")
non2xx=${non2xx:-0}
read -r e_connect e_read e_write e_timeout <<<"$(socket_errors "$out")"
e_connect=${e_connect:-0} e_read=${e_read:-0} e_write=${e_write:-0} e_timeout=${e_timeout:-0}
socket_total=$((e_connect + e_read + e_write + e_timeout))
p50=$(awk '$1=="50%" {print $2}' <<<"$out" | bench_to_ms)
p99=$(awk '$1=="99%" {print $2}' <<<"$out" | bench_to_ms)
ok_served=$(( $(served ok) - ok_before ))
bad_served=$(( $(served all) - all_before - ok_served ))
growth=$((rss_end - rss_start))
# Flat means no growth once the load is steady: from the first sample taken
# under load (all connections open, buffers allocated) to the end.
steady_growth=$((rss_end - rss_steady))
log_errors=$(grep -c -E ' ERROR |panicked' "$work/server.log" || true)
alive=yes
curl -fs "$base/healthz" >/dev/null || alive=no

echo
printf '%-22s %s\n' "requests" "$requests"
printf '%-22s %s\n' "req/s" "$rps (target $target)"
printf '%-22s %s ms / %s ms\n' "latency p50 / p99" "$p50" "$p99"
printf '%-22s %s\n' "non-2xx" "$non2xx"
printf '%-22s %s (connect %s, read %s, write %s, timeout %s)\n' "socket errors" \
    "$socket_total" "$e_connect" "$e_read" "$e_write" "$e_timeout"
printf '%-22s %s ok, %s not ok\n' "server /token count" "$ok_served" "$bad_served"
printf '%-22s %s -> %s (%+d KiB)\n' "RSS start -> end" "$(mib "$rss_start")" "$(mib "$rss_end")" "$growth"
printf '%-22s %s -> %s (%+d KiB)\n' "RSS ${steady_at}s -> end" "$(mib "$rss_steady")" "$(mib "$rss_end")" "$steady_growth"
printf '%-22s %s -> %s\n' "open fds start -> end" "$fds_start" "$fds_end"
printf '%-22s %s\n' "server log errors" "$log_errors"
printf '%-22s %s\n' "healthy after" "$alive"

verdict=PASS
reasons=()
[ "$non2xx" -eq 0 ] || reasons+=("$non2xx non-2xx responses")
[ "$socket_total" -eq 0 ] || reasons+=("$socket_total socket errors")
[ "$bad_served" -eq 0 ] || reasons+=("the server counted $bad_served failed /token requests")
[ "$steady_growth" -le "$rss_limit_kib" ] || reasons+=("RSS grew by $steady_growth KiB under steady load (limit $rss_limit_kib)")
[ "$log_errors" -eq 0 ] || reasons+=("$log_errors error lines in the server log")
[ "$alive" = yes ] || reasons+=("the server stopped answering /healthz")
if [ ${#reasons[@]} -gt 0 ]; then
    verdict="FAIL: $(IFS=';'; echo "${reasons[*]}")"
fi
echo "$verdict"
[ "$verdict" = PASS ]
