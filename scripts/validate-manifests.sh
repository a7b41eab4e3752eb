#!/usr/bin/env bash
# Validates every Kubernetes manifest under deploy/ against the Kubernetes schema of a current
# release, with kubernetes-validate (PyPI) in a venv cached under target/manifest-venv (the first
# run installs it, later runs reuse it).
#
# - Core kinds are validated with --strict (unknown fields are errors). A kind the tool has no
#   schema for is an error too, except Multus' NetworkAttachmentDefinition (a CRD): for those
#   this script checks the apiVersion, the name and that spec.config is a CNI config in JSON.
#   (crates/knit/tests/deploy.rs parses those configs with knit's own plugin parsers.)
# - When PyPI (or $PIP_INDEX_URL) is unreachable, or python3 cannot make a venv (Debian:
#   apt-get install python3-venv), it prints SKIP and exits 0, unless CI=true (as .ci/run sets
#   it) or KNIT_REQUIRE_MANIFEST_VALIDATION=1: then it fails, since nothing may pass untested
#   in CI.
#
# Environment: KNIT_K8S_VERSION (default: the newest the tool ships), KNIT_KUBERNETES_VALIDATE
# (the pip requirement; changing it reinstalls the venv), KNIT_MANIFEST_VENV (the venv's path).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUIREMENT="${KNIT_KUBERNETES_VALIDATE:-kubernetes-validate==1.37.0}"
VENV="${KNIT_MANIFEST_VENV:-${CARGO_TARGET_DIR:-target}/manifest-venv}"
MARKER="$VENV/.knit-installed"

skip() {
    if [ "${KNIT_REQUIRE_MANIFEST_VALIDATION:-0}" = 1 ] || [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; then
        echo "validate-manifests: FAIL: $*" >&2
        exit 1
    fi
    echo "validate-manifests: SKIP: $* (manifests not validated)" >&2
    exit 0
}

mapfile -t FILES < <(find deploy -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
if [ "${#FILES[@]}" -eq 0 ]; then
    echo "validate-manifests: no YAML files under deploy/" >&2
    exit 1
fi

mkdir -p "$(dirname "$VENV")"
# One installer at a time (test runs may overlap); the lock is released when the script exits.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV.lock"
    flock 9
fi

if [ ! -f "$MARKER" ] || [ "$(cat "$MARKER")" != "$REQUIREMENT" ]; then
    command -v python3 >/dev/null 2>&1 || skip "python3 is not installed"
    index="${PIP_INDEX_URL:-https://pypi.org/simple/}"
    if ! python3 - "$index" <<'EOF' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/kubernetes-validate/", timeout=10).read(1)
EOF
        skip "cannot reach the package index $index to install $REQUIREMENT"
    fi
    rm -rf "$VENV"
    echo "validate-manifests: installing $REQUIREMENT into $VENV" >&2
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        skip "python3 cannot create a venv (Debian: apt-get install python3-venv)"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$REQUIREMENT" >&2
    printf '%s' "$REQUIREMENT" >"$MARKER"
fi

VERSION_ARGS=()
if [ -n "${KNIT_K8S_VERSION:-}" ]; then
    VERSION_ARGS=(-k "$KNIT_K8S_VERSION")
fi

status=0
out=$("$VENV/bin/kubernetes-validate" --strict "${VERSION_ARGS[@]}" "${FILES[@]}" 2>&1) || status=$?
printf '%s\n' "$out"
# A kind without a schema is only a warning for the tool; here it is an error (a typo in kind or
# apiVersion would otherwise pass), except for the CRDs checked below.
unknown=$(printf '%s\n' "$out" | grep "Couldn't find schema" | grep -v "kind NetworkAttachmentDefinition with api version k8s.cni.cncf.io/v1 " || true)
if [ -n "$unknown" ]; then
    echo "validate-manifests: no schema for these kinds (typo in kind or apiVersion?):" >&2
    printf '%s\n' "$unknown" >&2
    status=1
fi

# Every document has apiVersion, kind and metadata.name; NetworkAttachmentDefinitions carry a
# CNI config in JSON. PyYAML comes with kubernetes-validate.
"$VENV/bin/python" - "${FILES[@]}" <<'EOF' || status=1
import json, re, sys, yaml

failed = False
for path in sys.argv[1:]:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    for i, d in enumerate(docs):
        where = f"{path}[{i}]"
        def bad(msg):
            global failed
            failed = True
            print(f"ERROR {where}: {msg}", file=sys.stderr)
        if not isinstance(d, dict) or not d.get("apiVersion") or not d.get("kind"):
            bad("not a Kubernetes object (apiVersion and kind are required)")
            continue
        name = (d.get("metadata") or {}).get("name", "")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", name or ""):
            bad(f"metadata.name {name!r} is not a DNS-1123 subdomain")
        if d["kind"] != "NetworkAttachmentDefinition":
            continue
        if d["apiVersion"] != "k8s.cni.cncf.io/v1":
            bad(f"apiVersion {d['apiVersion']!r}, expected k8s.cni.cncf.io/v1")
        spec = d.get("spec") or {}
        extra = set(spec) - {"config"}
        if extra:
            bad(f"unknown spec fields {sorted(extra)}")
        config = spec.get("config")
        if not isinstance(config, str):
            bad("spec.config must be a string holding the CNI config")
            continue
        try:
            conf = json.loads(config)
        except ValueError as e:
            bad(f"spec.config is not JSON: {e}")
            continue
        if not isinstance(conf, dict) or "cniVersion" not in conf or not conf.get("name") \
                or not (conf.get("type") or conf.get("plugins")):
            bad("spec.config needs cniVersion, name, and type or plugins")
        else:
            print(f"INFO {path} passed for resource networkattachmentdefinition/{name} (structure and CNI config)")
sys.exit(1 if failed else 0)
EOF

if [ "$status" -ne 0 ]; then
    echo "validate-manifests: FAILED" >&2
    exit 1
fi
echo "validate-manifests: ${#FILES[@]} files under deploy/ valid ($("$VENV/bin/kubernetes-validate" --version 2>&1 | tr -d '\n'))" >&2
