#!/usr/bin/env bash
# The release build: every binary in target/release (the node binary `knit`, the developer
# binary `knit-lab` with the lab and the benchmarks, the plugins), with the three CNI plugins
# (knit-routed, knit-ipam, knit-coordinator) linked statically.
#
# Why static: a plugin is copied onto nodes whose glibc we don't control (Debian's Go
# reference plugins are static for the same reason), and the runtime starts it once per pod
# per ADD/DEL. A static, non-PIE binary skips the dynamic loader and its relocations: about
# 0.4 ms of every plugin start on the benchmark VM (DESIGN.md section 8 counts it).
#
# crt-static cannot apply to the host's proc-macro crates, so the plugins are built with an
# explicit --target (host build tools stay dynamic) into target/<triple>/release and copied
# over the dynamic ones in target/release.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins "$@"
triple=$(rustc -vV | sed -n 's/^host: //p')
plugins=(knit-routed knit-ipam knit-coordinator)
pkgs=()
for p in "${plugins[@]}"; do pkgs+=(-p "$p"); done
env "CARGO_TARGET_$(echo "$triple" | tr 'a-z-' 'A-Z_')_RUSTFLAGS=-C target-feature=+crt-static -C relocation-model=static" \
    cargo build --release --target "$triple" "${pkgs[@]}" --bins "$@"
for p in "${plugins[@]}"; do
    # --remove-destination: target/release/<p> is a hard link into cargo's deps/ directory.
    cp --remove-destination "target/$triple/release/$p" "target/release/$p"
done
echo "static plugins: ${plugins[*]} (from target/$triple/release) in target/release"
# The node binary must stay slim: it links neither the lab nor the benchmarks (knit-lab does).
for b in knit knit-lab "${plugins[@]}"; do
    stat -c %s "target/release/$b" | awk -v b="$b" '{ printf "%-17s %6.1f MB\n", b, $1 / 1e6 }'
done
