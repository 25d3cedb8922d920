#!/usr/bin/env bash
# Generates, in a Kubernetes namespace, every Secret the overlays of deploy/k8s and the NATS
# values expect, so that nothing secret is ever kept in the repository:
#
#   leads-auth              signing.key: the HS256 key (48 random bytes, base64) that signs
#                           the services' tokens and `leads token`'s, and verifies them
#   leads-postgres-admin    username, password: the Postgres superuser (the local StatefulSet's,
#                           or CloudNativePG's superuserSecret); read by the migrate Job only
#   leads-<service>         db-password: its role's (leads_<service>), set by the migrate Job;
#                           nats-password: its NATS user's (leads-<service>)
#   leads-<service>-tls     tls.crt, tls.key, ca.crt: its certificate, for the names the
#                           service answers to in the namespace, serving and client use
#   leads-nats-server       LEADS_NATS_<SERVICE>_PASSWORD, LEADS_NATS_ADMIN_PASSWORD and
#                           PUBLISHER_<ORG>_PASSWORD: the environment of the NATS pods, which
#                           deploy/nats/nats-server.conf's users refer to
#   leads-nats-tls          tls.crt, tls.key, ca.crt: the NATS servers' certificate (clients
#                           and the routes between nodes)
#   leads-api-client        tls.crt, tls.key, ca.crt: a client certificate for operators' tools
#                           and ingress controllers, which production's mutual TLS asks for
#   leads-console-tls       tls.crt, tls.key, ca.crt: the console's client certificate, with
#                           which it calls the services in production (it holds nothing else)
#
# for the services ingest, lead, qualification, assignment, followup, broadcast, people and
# notifications, one CA (EC P-256, ten years; certificates two years). A Secret that already
# exists is kept, so running this again only adds what is missing (a new service, a new
# publisher): passwords are never changed under a running platform. Why a script rather than
# a Job in the cluster: nothing in the cluster needs the right to write Secrets, the CA's key
# never enters it, and --print hands the same Secrets to a sealed-secrets or SOPS workflow.
#
#   deploy/k8s/install-secrets.sh leads
#   deploy/k8s/install-secrets.sh --publisher acme leads        # adds publisher-acme's password
#   deploy/k8s/install-secrets.sh --ca-dir ~/leads-ca leads     # keeps the CA to sign more later
#   deploy/k8s/install-secrets.sh --renew-tls --ca-dir ~/leads-ca leads   # new certificates
#   deploy/k8s/install-secrets.sh --print leads > secrets.yaml  # everything anew, no cluster
#
# Needs openssl, and kubectl with access to the namespace (none with --print).
set -euo pipefail
# Arrays that may be empty expand as ${a[@]+"${a[@]}"}: under set -u, bash 3.2 (macOS) calls an
# empty one unbound.

SERVICES=(ingest lead qualification assignment followup broadcast people notifications)
KUBECTL="${KUBECTL:-kubectl}"
print=false
renew_tls=false
ca_dir=""
release=nats
cluster_domain=cluster.local
publishers=()

usage() {
    sed -n '/^#   deploy/s/^#   //p' "$0" >&2
    echo "options: --print, --ca-dir DIR, --renew-tls, --publisher ORG (repeatable)," \
        "--nats-release NAME (default nats), --cluster-domain NAME (default cluster.local)" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --print) print=true ;;
        --renew-tls) renew_tls=true ;;
        --ca-dir) ca_dir="${2:?--ca-dir needs a directory}"; shift ;;
        --publisher) publishers+=("${2:?--publisher needs an organisation id}"); shift ;;
        --nats-release) release="${2:?--nats-release needs a name}"; shift ;;
        --cluster-domain) cluster_domain="${2:?--cluster-domain needs a name}"; shift ;;
        -h | --help) usage ;;
        -*) echo "unknown option $1" >&2; usage ;;
        *) [ -z "${namespace:-}" ] || usage; namespace="$1" ;;
    esac
    shift
done
[ -n "${namespace:-}" ] || usage
if [[ ! "$namespace" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]]; then
    echo "$namespace is not a namespace name" >&2
    exit 2
fi
for org in ${publishers[@]+"${publishers[@]}"}; do
    if [[ ! "$org" =~ ^[A-Za-z0-9_-]{1,64}$ ]]; then
        echo "an organisation id holds 1 to 64 letters, digits, '_' or '-'" >&2
        exit 2
    fi
done
command -v openssl >/dev/null || { echo "install-secrets: needs openssl" >&2; exit 1; }
$print || command -v "$KUBECTL" >/dev/null || { echo "install-secrets: needs kubectl" >&2; exit 1; }

umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

log() { echo "install-secrets: $*" >&2; }
upper() { tr 'a-z-' 'A-Z_' <<<"$1"; }
# 48 letters and digits, a letter first (about 285 bits): nothing a URL, a pgpass line or the
# NATS configuration would have to escape. nats-server parses a variable's value as it would
# the configuration, so a value starting with a digit may be read as a number ("1e5...", "58M")
# and refused. `cut` reads all its input, so no pipe breaks under pipefail.
password() {
    local value
    value=$(openssl rand -base64 48 | tr -dc 'A-Za-z' | cut -c1)$(openssl rand -base64 96 | tr -dc 'A-Za-z0-9' | cut -c1-47)
    [ ${#value} -eq 48 ] || { log "openssl gave too little randomness"; exit 1; }
    printf '%s\n' "$value"
}

# exists NAME: the Secret is in the namespace (never with --print, which starts afresh).
exists() {
    ! $print && "$KUBECTL" -n "$namespace" get secret "$1" -o name >/dev/null 2>&1
}

# value NAME KEY: one value of an existing Secret, or nothing.
value() {
    exists "$1" || return 0
    "$KUBECTL" -n "$namespace" get secret "$1" -o go-template="{{ with index .data \"$2\" }}{{ . }}{{ end }}" |
        openssl base64 -d -A
}

# emit NAME TYPE KEY=FILE...: the Secret, printed or created (replaced with --replace first).
emit() {
    local replace=false
    if [ "$1" = --replace ]; then replace=true; shift; fi
    local name=$1 type=$2
    shift 2
    local args=()
    for pair in "$@"; do args+=("--from-file=$pair"); done
    local yaml="$work/$name.yaml"
    "$KUBECTL" create secret generic "$name" --namespace "$namespace" --type "$type" "${args[@]}" \
        --dry-run=client -o yaml >"$yaml.raw"
    "$KUBECTL" label --local -f "$yaml.raw" app.kubernetes.io/part-of=leads -o yaml >"$yaml"
    if $print; then
        echo "---"
        cat "$yaml"
    elif $replace && exists "$name"; then
        "$KUBECTL" replace -f "$yaml" >/dev/null
        log "replaced $name"
    else
        "$KUBECTL" create -f "$yaml" >/dev/null
        log "created $name"
    fi
}

# add_keys NAME KEY=FILE...: adds keys to an existing Secret.
add_keys() {
    local name=$1
    shift
    local patch="$work/$name.patch.json" first=true
    printf '{"data":{' >"$patch"
    for pair in "$@"; do
        $first || printf ',' >>"$patch"
        first=false
        printf '"%s":"%s"' "${pair%%=*}" "$(openssl base64 -A -in "${pair#*=}")" >>"$patch"
    done
    printf '}}' >>"$patch"
    "$KUBECTL" -n "$namespace" patch secret "$name" --type merge --patch-file "$patch" >/dev/null
    log "added ${*%%=*} to $name"
}

# Which certificates to issue, checked before anything changes: a new one must come from the CA
# that signed those kept.
tls_secrets=(leads-nats-tls leads-api-client leads-console-tls)
for service in "${SERVICES[@]}"; do tls_secrets+=("leads-$service-tls"); done
missing_tls=()
kept_tls=0
for name in "${tls_secrets[@]}"; do
    if $renew_tls || ! exists "$name"; then missing_tls+=("$name"); else kept_tls=$((kept_tls + 1)); fi
done

have_ca=false
[ -n "$ca_dir" ] && [ -s "$ca_dir/ca.crt" ] && [ -s "$ca_dir/ca.key" ] && have_ca=true
if [ ${#missing_tls[@]} -gt 0 ] && [ "$kept_tls" -gt 0 ] && ! $renew_tls && ! $have_ca; then
    log "${missing_tls[*]} missing, but the CA that signed the other certificates is not at hand:" \
        "pass --ca-dir with it, or --renew-tls to replace every certificate"
    exit 1
fi

# --- token key, superuser
if ! exists leads-auth; then
    mkdir -p "$work/auth"
    openssl rand -base64 48 | tr -d '\n' >"$work/auth/signing.key"
    emit leads-auth Opaque "signing.key=$work/auth/signing.key"
fi
if ! exists leads-postgres-admin; then
    mkdir -p "$work/admin"
    printf postgres >"$work/admin/username"
    password | tr -d '\n' >"$work/admin/password"
    emit leads-postgres-admin kubernetes.io/basic-auth "username=$work/admin/username" "password=$work/admin/password"
fi

# --- passwords per service, and NATS's environment
mkdir -p "$work/nats"
nats_missing=()
nats_variable() {
    local variable=$1 fallback=${2:-}
    local file="$work/nats/$variable"
    value leads-nats-server "$variable" >"$file"
    if [ ! -s "$file" ]; then
        if [ -n "$fallback" ]; then cp "$fallback" "$file"; fi
        [ -s "$file" ] || password | tr -d '\n' >"$file"
        nats_missing+=("$variable=$file")
    fi
}
for service in "${SERVICES[@]}"; do
    variable="LEADS_NATS_$(upper "$service")_PASSWORD"
    dir="$work/$service"
    mkdir -p "$dir"
    # The service's own Secret, when kept, says what NATS must accept.
    value "leads-$service" nats-password >"$dir/nats-password"
    nats_variable "$variable" "$dir/nats-password"
    if ! exists "leads-$service"; then
        password | tr -d '\n' >"$dir/db-password"
        cp "$work/nats/$variable" "$dir/nats-password"
        emit "leads-$service" Opaque "db-password=$dir/db-password" "nats-password=$dir/nats-password"
    fi
done
nats_variable LEADS_NATS_ADMIN_PASSWORD
for org in ${publishers[@]+"${publishers[@]}"}; do
    nats_variable "PUBLISHER_$(upper "$org")_PASSWORD"
done
if ! exists leads-nats-server; then
    emit leads-nats-server Opaque "${nats_missing[@]}"
elif [ ${#nats_missing[@]} -gt 0 ]; then
    add_keys leads-nats-server "${nats_missing[@]}"
    log "restart the NATS pods (or reload their configuration) for the new users' passwords"
fi

# --- certificates
if [ ${#missing_tls[@]} -gt 0 ]; then
    ca="$work/ca"
    mkdir -p "$ca"
    if $have_ca; then
        cp "$ca_dir/ca.crt" "$ca_dir/ca.key" "$ca/"
        log "signing with the CA in $ca_dir"
    else
        cat >"$ca/ca.cnf" <<CNF
[req]
distinguished_name = dn
prompt = no
x509_extensions = ca
[dn]
CN = leads platform CA ($namespace)
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
CNF
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$ca/ca.key" 2>/dev/null
        openssl req -x509 -new -key "$ca/ca.key" -config "$ca/ca.cnf" -sha256 -days 3650 -out "$ca/ca.crt"
        if [ -n "$ca_dir" ]; then
            mkdir -p "$ca_dir" && chmod 700 "$ca_dir"
            cp "$ca/ca.crt" "$ca/ca.key" "$ca_dir/"
            log "kept the new CA in $ca_dir (its key signs every certificate of the platform: keep it offline)"
        fi
    fi

    # issue NAME CN USAGE [DNS...]: a certificate signed by the CA, in $work/NAME.
    issue() {
        local name=$1 cn=$2 usage=$3
        shift 3
        local dir="$work/$name" sans=""
        for dns in "$@"; do sans="$sans,DNS:$dns"; done
        mkdir -p "$dir"
        cat >"$dir/cert.cnf" <<CNF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = $cn
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = $usage
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
        [ -z "$sans" ] || echo "subjectAltName = IP:127.0.0.1$sans" >>"$dir/cert.cnf"
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/tls.key" 2>/dev/null
        openssl req -new -key "$dir/tls.key" -config "$dir/cert.cnf" -out "$dir/tls.csr"
        openssl x509 -req -in "$dir/tls.csr" -CA "$ca/ca.crt" -CAkey "$ca/ca.key" \
            -set_serial "0x$(openssl rand -hex 16)" -sha256 -days 730 \
            -extfile "$dir/cert.cnf" -extensions leaf -out "$dir/tls.crt" 2>/dev/null
        cp "$ca/ca.crt" "$dir/ca.crt"
        emit --replace "$name" kubernetes.io/tls "tls.crt=$dir/tls.crt" "tls.key=$dir/tls.key" "ca.crt=$dir/ca.crt"
    }
    # names HOST...: the names each HOST answers to from a pod of the namespace, and beyond.
    names=()
    in_namespace() {
        names=()
        for host in "$@"; do
            names+=("$host" "$host.$namespace" "$host.$namespace.svc" "$host.$namespace.svc.$cluster_domain")
        done
    }
    wanted() { [[ " ${missing_tls[*]} " == *" $1 "* ]]; }

    for service in "${SERVICES[@]}"; do
        # Serves its gRPC port and calls the others with the same certificate.
        if wanted "leads-$service-tls"; then
            in_namespace "$service"
            issue "leads-$service-tls" "leads-$service" "serverAuth, clientAuth" "${names[@]}" localhost
        fi
    done
    if wanted leads-nats-tls; then
        # Clients reach the Service `nats`; the nodes reach each other as <pod>.nats-headless
        # (named here up to five nodes: not every TLS client takes a wildcard of one label).
        in_namespace "$release" "$release-headless" "*.$release-headless" \
            "$release-"{0..4}".$release-headless"
        issue leads-nats-tls "$release" "serverAuth, clientAuth" "${names[@]}" localhost
    fi
    if wanted leads-api-client; then
        issue leads-api-client leads-api-client clientAuth
    fi
    if wanted leads-console-tls; then
        # A client only: people reach the console through the Ingress, never with this.
        issue leads-console-tls leads-console clientAuth
    fi
    if $renew_tls && ! $print; then
        log "new certificates: restart the services and the NATS pods to use them" \
            "(kubectl -n $namespace rollout restart deployment statefulset)"
    fi
fi
$print || log "done: the Secrets of namespace $namespace are in place"
