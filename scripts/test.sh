#!/usr/bin/env bash
# The test suite: builds every binary (integration tests execute the plugins and the CLI as
# real processes), then runs all tests with nextest. Needs root: tests make network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins --quiet
# deploy/'s Kubernetes manifests against the current schema (kubernetes-validate from PyPI, venv
# cached in target/manifest-venv; prints SKIP and goes on when PyPI is unreachable, but fails under
# CI=true).
scripts/validate-manifests.sh
cargo nextest run --workspace --no-fail-fast "$@"
