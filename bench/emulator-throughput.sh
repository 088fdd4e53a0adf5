#!/usr/bin/env bash
# Throughput of azure-emulator under a mixed Microsoft Graph load (~80% reads, ~20% writes) with 10,000
# applications stored, driven by bench/emulator-load from a second process.
#
# Builds both in release mode, starts the emulator on a free port, runs the generator at a few concurrency
# levels over HTTP/1.1 and HTTP/2, and writes bench/results/emulator-throughput.{json,md}.
#
# Environment: DURATION (seconds per level, default 20), LEVELS (default 16,64,256), APPS (default 10000),
# PROTOCOLS (default "h1 h2"), CARGO_TARGET_DIR (default target/helper-bench), PERF=1 to also record a
# perf profile of the emulator during one extra run (needs perf; written to bench/results/perf-emulator.txt).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
DURATION=${DURATION:-20}
LEVELS=${LEVELS:-16,64,256}
APPS=${APPS:-10000}
PROTOCOLS=${PROTOCOLS:-"h1 h2"}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/helper-bench}
results=$root/bench/results
mkdir -p "$results"

# The commit the binaries are built from (recorded before building, in case the tree moves during the run).
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain -- emulator/src emulator/Cargo.toml 2>/dev/null | grep -q . && echo " (with uncommitted changes in emulator/src)" || true)
cargo build --release -p azure-emulator -p emulator-load
emulator=$CARGO_TARGET_DIR/release/azure-emulator
load=$CARGO_TARGET_DIR/release/emulator-load

work=$(mktemp -d)
emulator_pid=
cleanup() {
    if [[ -n $emulator_pid ]]; then kill "$emulator_pid" 2>/dev/null || true; wait "$emulator_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

start_emulator() {
    RUST_LOG=warn "$emulator" --listen "127.0.0.1:$port" --state-dir "$work/state" --env-file "$work/env" \
        >"$work/emulator.log" 2>&1 &
    emulator_pid=$!
    for _ in $(seq 100); do [[ -s $work/env ]] && return 0; sleep 0.1; done
    echo "the emulator did not start:" >&2; cat "$work/emulator.log" >&2; exit 1
}
stop_emulator() {
    kill "$emulator_pid" 2>/dev/null || true
    wait "$emulator_pid" 2>/dev/null || true
    emulator_pid=
    rm -f "$work/env"
}

runs=()
for proto in $PROTOCOLS; do
    # A fresh emulator per protocol, so that both start from the same 10,000 applications.
    start_emulator
    clients=1
    [[ $proto == h2 ]] && clients=4
    "$load" --env-file "$work/env" --apps "$APPS" --duration "$DURATION" --concurrency "$LEVELS" \
        --protocol "$proto" --clients "$clients" --emulator-pid "$emulator_pid" \
        --json-out "$work/run-$proto.json"
    runs+=("$work/run-$proto.json")
    if [[ $proto == h1 ]]; then
        # Each route on its own, to show what each costs (same emulator, same 10,000 applications).
        iso=${ISOLATED_DURATION:-5}
        for route in id appid filter; do
            "$load" --env-file "$work/env" --no-seed --duration "$iso" --warmup 1 --concurrency 64 --mix 1:0:0 \
                --read-routes "$route" --emulator-pid "$emulator_pid" --json-out "$work/iso-$route.json"
        done
        "$load" --env-file "$work/env" --no-seed --duration "$iso" --warmup 1 --concurrency 64 --mix 0:1:1 \
            --emulator-pid "$emulator_pid" --json-out "$work/iso-writes.json"
        "$load" --env-file "$work/env" --no-seed --duration "$iso" --warmup 1 --concurrency 64 --mix 12:1:1 \
            --read-routes id,appid --emulator-pid "$emulator_pid" --json-out "$work/iso-nofilter.json"
    fi
    rss_kb=$(awk '/VmHWM/ {print $2}' "/proc/$emulator_pid/status")
    echo "$rss_kb" >"$work/rss-$proto"
    stop_emulator
done

if [[ ${PERF:-0} == 1 ]] && command -v perf >/dev/null; then
    start_emulator
    "$load" --env-file "$work/env" --apps "$APPS" --duration 1 --warmup 0 --concurrency 16 >/dev/null 2>&1
    perf record -F 499 -g -p "$emulator_pid" -o "$work/perf.data" -- sleep 12 >/dev/null 2>&1 &
    perf_pid=$!
    "$load" --env-file "$work/env" --apps "$APPS" --no-seed --duration 10 --warmup 1 --concurrency 64 \
        --emulator-pid "$emulator_pid" --json-out "$work/perf-run.json" || true
    wait "$perf_pid" || true
    perf report -i "$work/perf.data" --no-children --stdio --percent-limit 1.5 2>/dev/null \
        | grep -v '^$' | head -150 >"$results/perf-emulator.txt" || true
    stop_emulator
fi

# Machine and versions.
cpu_model=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
os=$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-unknown}")
kernel=$(uname -r)
emulator_version=$("$emulator" --version)
load_version=$("$load" --version)
rustc_version=$(rustc --version)

python3 - "$results" "$DURATION" "$APPS" "$(nproc)" "$cpu_model" "$mem" "$os" "$kernel" "$commit$dirty" \
    "$emulator_version" "$load_version" "$rustc_version" "$work" "${runs[@]}" <<'EOF'
import json, sys, os
(results, duration, apps, nproc, cpu, mem, osname, kernel, commit, emu_v, load_v, rustc_v, work, *runs) = sys.argv[1:]
isolated = []
for name, what in [("id", "GET /applications/{id} only"), ("appid", "GET /applications(appId='…') only"),
                   ("filter", "GET /applications?$filter=appId eq '…'&$select=id,appId only"),
                   ("writes", "writes only (PATCH tags : addPassword+removePassword, 1:1)"),
                   ("nofilter", "the mixed load without the $filter read (12:1:1, reads by id and by appId)")]:
    try:
        l = json.load(open(os.path.join(work, f"iso-{name}.json")))["levels"][0]
        l["what"] = what
        isolated.append(l)
    except Exception:
        pass
levels = []
rss = {}
for r in runs:
    d = json.load(open(r))
    levels += d["levels"]
    proto = d["levels"][0]["protocol"] if d["levels"] else "?"
    try:
        rss[proto] = int(open(os.path.join(work, f"rss-{proto}")).read().strip()) / 1024
    except Exception:
        pass
    seeded = d.get("seeded_in_s")
machine = {"nproc": int(nproc), "cpu": cpu, "memory": mem, "os": osname, "kernel": kernel}
versions = {"commit": commit, "emulator": emu_v, "generator": load_v, "rustc": rustc_v}
out = {"target_rps": 5000, "applications": int(apps), "duration_s": float(duration), "machine": machine,
       "versions": versions, "emulator_peak_rss_mib": rss, "seeded_in_s": seeded, "levels": levels,
       "isolated_routes_h1_c64": isolated}
json.dump(out, open(os.path.join(results, "emulator-throughput.json"), "w"), indent=2)

best = max(levels, key=lambda l: l["rps"]) if levels else None
md = []
md.append("# azure-emulator throughput\n")
md.append(f"Mixed Microsoft Graph load against {int(apps):,} stored applications owned by the operator, from a second "
          f"process (bench/emulator-load); {float(duration):g} s measured per level after a 2 s warm-up; throttling off. "
          "Mix per operation 12:1:1 of reads : PATCH tags : addPassword+removePassword, i.e. ~80% reads "
          "(equal shares of GET /applications/{id}, GET /applications(appId='…'), "
          "GET /applications?$filter=appId eq '…'&$select=id,appId) and ~20% writes. Target: 5,000 req/s.\n")
md.append("| protocol | concurrency | req/s | p50 ms | p90 ms | p99 ms | writes | non-2xx | emulator CPU (cores) | generator CPU (cores) |")
md.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
f = lambda v, n=2: "?" if v is None else f"{v:.{n}f}"
for l in levels:
    md.append(f"| {l['protocol']}{' ×'+str(l['clients']) if l['clients']>1 else ''} | {l['concurrency']} | {l['rps']:,.0f} | {f(l['p50_ms'])} | {f(l['p90_ms'])} | "
              f"{f(l['p99_ms'])} | {l['write_share']*100:.0f}% | {l['non2xx']} | {f(l['emulator_cpu_cores'])} | {f(l['generator_cpu_cores'])} |")
if best:
    md.append("\nPer route at the best level "
              f"({best['protocol']}, concurrency {best['concurrency']}, {best['rps']:,.0f} req/s):\n")
    md.append("| route | req/s | p50 ms | p90 ms | p99 ms | non-2xx |")
    md.append("|---|---:|---:|---:|---:|---|")
    for name, r in best["routes"].items():
        non = ", ".join(f"{k}: {v}" for k, v in r["non2xx"].items()) or "0"
        md.append(f"| `{name}` | {r['rps']:,.0f} | {f(r['p50_ms'])} | {f(r['p90_ms'])} | {f(r['p99_ms'])} | {non} |")
    verdict = "meets" if best["rps"] >= 5000 else "DOES NOT meet"
    md.append(f"\nBest: {best['rps']:,.0f} req/s — {verdict} the 5,000 req/s target.")
    if best.get("emulator_cpu_us_per_request") is not None:
        md.append(f"Emulator CPU per request at that level: {best['emulator_cpu_us_per_request']:.0f} µs; "
                  f"generator: {best['generator_cpu_us_per_request']:.0f} µs.")
if isolated:
    md.append("\nEach route alone (HTTP/1.1, concurrency 64, same emulator and applications):\n")
    md.append("| load | req/s | p50 ms | p99 ms | emulator CPU (cores) | emulator CPU µs/request |")
    md.append("|---|---:|---:|---:|---:|---:|")
    for l in isolated:
        md.append(f"| {l['what']} | {l['rps']:,.0f} | {f(l['p50_ms'])} | {f(l['p99_ms'])} | {f(l['emulator_cpu_cores'])} | {f(l['emulator_cpu_us_per_request'], 0)} |")
if rss:
    md.append("\nEmulator peak RSS: " + ", ".join(f"{k} run {v:.0f} MiB" for k, v in rss.items()) + ".")
md.append("\n## Machine\n")
md.append(f"- CPUs (nproc): {nproc}; model: {cpu}")
md.append(f"- Memory: {mem}")
md.append(f"- OS: {osname}, kernel {kernel}")
md.append(f"- Emulator and generator share the machine (both processes compete for the same {nproc} CPUs).")
md.append("\n## Versions\n")
md.append(f"- Commit: {commit}")
md.append(f"- {emu_v}; {load_v}; {rustc_v}; release profile (thin LTO)")
md.append("\nReproduce: `bench/emulator-throughput.sh` (DURATION, LEVELS, APPS, PROTOCOLS, PERF=1).")
open(os.path.join(results, "emulator-throughput.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md))
EOF
