#!/usr/bin/env bash
# Instruction counts, for regression tracking: `valgrind --tool=callgrind`
# (Debian package `valgrind`) counts instructions, not time, so the figures
# repeat whatever else the machine is doing. Release builds, as shipped:
#   helper_get       one warm `docker-credential-regauth get` (whole process)
#   kubelet_hit      one kubelet-plugin answer from the cache (whole process)
#   token_issue      one GET /token (cached password) inside a running server,
#                    averaged over N requests on one connection
#   token_refresh    one GET /token with a refresh token as Basic, likewise
#   floor_helper     the floor helper (bench/floor), for comparison
#   floor_issue      one request to the floor server, likewise
#
# Usage: bench/instructions.sh [N=200]
# Env:   BENCH_PROFILES=DIR keeps the callgrind files there, for
#        `callgrind_annotate --inclusive=yes DIR/cg.NAME`.
set -euo pipefail

n=${1:-200}
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_require valgrind callgrind_control
bench_setup

# Total instructions (Ir) in a callgrind output file.
total_ir() {
    awk '/^(summary|totals):/ {print $2; exit}' "$1"
}

# One process, start to end.
count_process() { # name stdin-file command...
    local name=$1 input=$2 out="$work/cg.$1"
    shift 2
    valgrind --tool=callgrind --callgrind-out-file="$out" "$@" <"$input" >/dev/null 2>"$work/valgrind.$name.log"
    printf '%s %s\n' "$name" "$(total_ir "$out")"
}

# A running server: the counters are zeroed after start-up and a first
# request (which seeds the random number generator), and dumped after n
# more, so only those n count. @ADDR@ in the command is
# replaced by a free loopback address.
count_server() { # name url header command...
    local name=$1 url=$2 header=$3 out="$work/cg.$1" port pid arg args=()
    shift 3
    port=$(bench_free_port)
    for arg in "$@"; do args+=("${arg//@ADDR@/127.0.0.1:$port}"); done
    valgrind --tool=callgrind --callgrind-out-file="$out" \
        "${args[@]}" 2>"$work/valgrind.$name.log" &
    pid=$!
    for _ in $(seq 600); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
    curl -fs -H "$header" "http://127.0.0.1:$port$url" >/dev/null
    callgrind_control -z "$pid" >/dev/null
    local urls=()
    for _ in $(seq "$n"); do urls+=("http://127.0.0.1:$port$url"); done
    curl -fs -H "$header" "${urls[@]}" >/dev/null
    callgrind_control -d "$pid" >/dev/null
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    mv "$out.1" "$out"
    printf '%s %s\n' "$name" "$(( $(total_ir "$out") / n ))"
}

bench_helper_inputs
export REGAUTH_HELPER_CONFIG="$work/helper.yaml" REGAUTH_CACHE_DIR="$work/cache"
"$bin_dir/docker-credential-regauth" get < "$work/host" >/dev/null
"$bin_dir/docker-credential-regauth" kubelet < "$work/kubelet.json" >/dev/null
cache_file=$(ls "$work"/cache/*.json | head -n1)

refresh=$(bench_refresh_token)
basic_password="Authorization: Basic $(printf 'bench:%s' "$password" | base64 -w0)"
basic_refresh="Authorization: Basic $(printf 'bench:%s' "$refresh" | base64 -w0)"
{
    count_process helper_get "$work/host" "$bin_dir/docker-credential-regauth" get
    count_process kubelet_hit "$work/kubelet.json" "$bin_dir/docker-credential-regauth" kubelet
    count_process floor_helper "$work/host" "$bin_dir/floor-helper" "$cache_file"
    count_server token_issue "/token?$scope" "$basic_password" \
        "$bin" serve --config "$work/config.yaml" --listen @ADDR@
    count_server token_refresh "/token?$scope" "$basic_refresh" \
        "$bin" serve --config "$work/config.yaml" --listen @ADDR@
    count_server floor_issue "/token?$scope" "$basic_password" \
        "$bin_dir/floor-server" @ADDR@ "$work/signing.key"
} > "$work/counts"
if [ -n "${BENCH_PROFILES:-}" ]; then
    mkdir -p "$BENCH_PROFILES"
    cp "$work"/cg.* "$BENCH_PROFILES/"
fi

echo "instructions (valgrind --tool=callgrind), release builds, $(date -u +%Y-%m-%d)"
awk '{ ir[$1] = $2; order[NR] = $1 }
     END {
        printf "%-16s %14s %10s\n", "what", "instructions", "vs floor"
        for (i = 1; i <= NR; i++) {
            k = order[i]; f = (k ~ /^(helper_get|kubelet_hit)$/) ? "floor_helper" : (k ~ /^token_/ ? "floor_issue" : "")
            printf "%-16s %14d %10s\n", k, ir[k], (f != "" && ir[f] > 0) ? sprintf("%.2fx", ir[k] / ir[f]) : "-"
        }
     }' "$work/counts"
