#!/usr/bin/env bash
# Benchmark for `knit trace` (DESIGN.md section 7: under 100 ms on a lab node with 1000 pods).
# Builds a two-node lab with PODS overlay pods on node1 (plus a few of each kind) with the
# developer binary `knit-lab`, then times `knit trace` (the node binary) between pods on the two
# nodes, REPS times, and prints the median and max.
# Usage: scripts/bench-trace.sh [PODS=1000] [REPS=20]   (root; removes its lab at the end)
set -euo pipefail
cd "$(dirname "$0")/.."
PODS=${1:-1000}
REPS=${2:-20}
# The newer of the release and debug builds, unless KNIT says which.
if [ -z "${KNIT:-}" ]; then
    KNIT=target/debug/knit
    [ target/release/knit -nt "$KNIT" ] && KNIT=target/release/knit
fi
KNIT_LAB="$(dirname "$KNIT")/knit-lab"
[ -x "$KNIT_LAB" ] || { echo "no $KNIT_LAB: cargo build --workspace --bins (or scripts/build-release.sh)" >&2; exit 1; }
NAME="bt$$"
TOPO=$(mktemp --suffix=.toml)
trap '"$KNIT_LAB" lab down --name "$NAME" >/dev/null 2>&1 || true; rm -f "$TOPO"' EXIT
{
cat <<'TOML'
overlay_cidr = "10.240.0.0/14"
service_cidr = "10.96.0.0/16"
block_size = 26
node_asn = 64512
tor_asn = 64513
[fabric]
gateways = ["172.16.0.1/16"]
external_gateway = "198.51.100.1/24"
[[nodes]]
name = "node1"
ip = "172.16.1.2/16"
[[nodes]]
name = "node2"
ip = "172.16.1.3/16"
[[underlay_pools]]
name = "ul"
cidr = "172.16.0.0/16"
gateway = "172.16.0.1"
range_start = "172.16.2.1"
range_end = "172.16.2.254"
[[pods]]
name = "u1"
node = "node1"
kind = "underlay"
pool = "ul"
[[pods]]
name = "o2"
node = "node2"
kind = "overlay"
[[services]]
name = "web"
endpoints = "overlay"
cluster_ip = "10.96.0.10"
port = 80
target_port = 8080
node_port = 30080
[[clients]]
name = "ext"
ip = "198.51.100.10/24"
gateway = "198.51.100.1"
side = "external"
TOML
for i in $(seq 1 "$PODS"); do printf '[[pods]]\nname = "p%s"\nnode = "node1"\nkind = "overlay"\n' "$i"; done
} > "$TOPO"
# The Service over every overlay pod would make every pod relevant; keep it on o2 only.
sed -i 's/endpoints = "overlay"/endpoints = ["o2"]/' "$TOPO"
t0=$(date +%s%N)
"$KNIT_LAB" lab up --name "$NAME" --topology "$TOPO" 2>/dev/null
echo "lab with $PODS pods on node1 up in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
for pair in "p1 o2" "u1 o2" "o2 p$PODS" "ext 172.16.1.2:30080"; do
    set -- $pair
    ms=()
    for _ in $(seq 1 "$REPS"); do
        s=$(date +%s%N)
        "$KNIT" trace --lab "$NAME" "$1" "$2" >/dev/null || true
        ms+=($(( ($(date +%s%N) - s) / 1000000 )))
    done
    sorted=$(printf '%s\n' "${ms[@]}" | sort -n)
    med=$(echo "$sorted" | sed -n "$(( (REPS + 1) / 2 ))p")
    max=$(echo "$sorted" | tail -1)
    echo "knit trace $1 → $2: median ${med} ms, max ${max} ms (target < 100 ms)"
done
