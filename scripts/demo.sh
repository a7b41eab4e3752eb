#!/usr/bin/env bash
# The main job until the lab lands: attach a throwaway pod namespace to a throwaway node namespace
# with Debian's ptp + host-local through `knit cni add`, ping the gateway, delete twice, clean up.
# Nothing touches the root namespace: knit runs inside the node namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
knit=${KNIT:-target/release/knit}
[ -x "$knit" ] || knit=target/debug/knit
[ -x "$knit" ] || { echo "build first: cargo build --release --workspace --bins" >&2; exit 1; }

run=$(printf '%04x%04x' $RANDOM $RANDOM)
node="knit-demo-$run-node"; pod="knit-demo-$run-pod"
work=$(mktemp -d)
cleanup() {
    ip netns del "$pod" 2>/dev/null || true
    ip netns del "$node" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

ip netns add "$node"; ip netns add "$pod"
ip -n "$node" link set lo up
cat > "$work/ptp.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "demo",
 "plugins": [{"type": "ptp", "ipMasq": false,
              "ipam": {"type": "host-local", "dataDir": "$work/ipam",
                       "ranges": [[{"subnet": "10.250.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}
JSON
cni() { ip netns exec "$node" "$knit" cni "$@" --conflist "$work/ptp.conflist" --netns "/run/netns/$pod" \
          --container-id "demo-$run" --state-dir "$work/state" --cni-path /usr/lib/cni; }

echo "== knit cni add"
cni add | tee "$work/result.json"
gw=$(grep -o '"gateway": *"[^"]*"' "$work/result.json" | head -n 1 | cut -d '"' -f 4)
echo "== ping $gw from the pod"
ip netns exec "$pod" ping -c 2 -W 1 "$gw"
echo "== knit cni del (twice)"
cni del; cni del
left=$(ip -n "$node" -o link show type veth | wc -l)
echo "veths left in the node: $left"
[ "$left" -eq 0 ]
echo "demo passed"
