#!/bin/sh
# The `secrets` one-shot of deploy/compose.yaml: makes, on first start, every secret the
# platform needs, into the volumes mounted under $SECRETS (one volume per consumer, so that
# no container sees another's), and keeps them on later starts. Nothing is committed and
# nothing comes from the compose file, except the Postgres password of an install made
# before this script existed (POSTGRES_PASSWORD, used only when no password was made yet).
#
#   auth/signing.key            HS256 key that signs and verifies tokens (every service)
#   postgres/password           the Postgres superuser's (the postgres container)
#   migrate/pgpass              the same, for `leads migrate` (PGPASSFILE)
#   migrate/roles/<service>     each service role's password, which `leads migrate` sets
#   <service>/db-password       that role's password (the service's own copy)
#   <service>/nats-password     the service's NATS user's password (leads-<service>)
#   nats/env                    every password the NATS configuration names ($VAR), for
#                               nats-server's environment
#
# A secret is generated once, into one place (postgres/, migrate/roles/, nats/, auth/), and
# copied from there to its other readers on every start, so that a copy lost with its volume
# comes back identical. Runs as root in a small image with a shell (the leads image has
# none); files belong to the user that reads them, mode 0400 (pgpass 0600, as libpq wants).
set -eu
umask 077

SECRETS="${SECRETS:-/secrets}"
NATS_CONF="${NATS_CONF:-/etc/nats/leads.conf}"
SERVICES="ingest lead qualification assignment followup broadcast people notifications"
LEADS_UID="${LEADS_UID:-65532}"
# The postgres user of the official postgres image; nats-server runs as root.
POSTGRES_UID="${POSTGRES_UID:-999}"
NATS_UID="${NATS_UID:-0}"

# 48 letters and digits, a letter first: about 285 bits, and nothing a URL, a pgpass line or
# the NATS configuration would have to escape. nats-server parses a variable's value as it
# would the configuration, so a value starting with a digit may be read as a number with a
# unit ("58M...") and refused.
random() {
    value=$(tr -dc 'A-Za-z' </dev/urandom | head -c 1)$(tr -dc 'A-Za-z0-9' </dev/urandom | head -c 47)
    [ ${#value} -eq 48 ] || { echo "secrets: no randomness from /dev/urandom" >&2; exit 1; }
    printf '%s' "$value"
}

# dir PATH OWNER: a directory only OWNER may enter.
dir() {
    mkdir -p "$1"
    chown "$2:$2" "$1"
    chmod 0700 "$1"
}

# generate FILE: a new random secret in FILE, unless FILE already holds one.
generate() {
    [ -s "$1" ] && return 0
    random >"$1.new"
    mv "$1.new" "$1"
    echo "secrets: made ${1#"$SECRETS"/}"
}

# place SOURCE TARGET OWNER MODE: TARGET becomes a copy of SOURCE.
place() {
    cp "$1" "$2.new"
    chown "$3:$3" "$2.new"
    chmod "$4" "$2.new"
    mv "$2.new" "$2"
}

upper() { printf '%s' "$1" | tr 'a-z-' 'A-Z_'; }

dir "$SECRETS/auth" "$LEADS_UID"
generate "$SECRETS/auth/signing.key"
chown "$LEADS_UID:$LEADS_UID" "$SECRETS/auth/signing.key"
chmod 0400 "$SECRETS/auth/signing.key"

dir "$SECRETS/postgres" "$POSTGRES_UID"
if [ ! -s "$SECRETS/postgres/password" ] && [ -n "${POSTGRES_PASSWORD:-}" ]; then
    # An install whose database was created with a password of the operator's choosing.
    printf '%s' "$POSTGRES_PASSWORD" >"$SECRETS/postgres/password"
    echo "secrets: took the Postgres password from POSTGRES_PASSWORD"
fi
generate "$SECRETS/postgres/password"
chown "$POSTGRES_UID:$POSTGRES_UID" "$SECRETS/postgres/password"
chmod 0400 "$SECRETS/postgres/password"

dir "$SECRETS/migrate" "$LEADS_UID"
dir "$SECRETS/migrate/roles" "$LEADS_UID"
# pgpass escapes ':' and '\\' with a backslash.
printf '*:*:*:postgres:%s\n' "$(sed 's/[\\:]/\\&/g' "$SECRETS/postgres/password")" >"$SECRETS/migrate/pgpass.new"
chown "$LEADS_UID:$LEADS_UID" "$SECRETS/migrate/pgpass.new"
chmod 0600 "$SECRETS/migrate/pgpass.new"
mv "$SECRETS/migrate/pgpass.new" "$SECRETS/migrate/pgpass"

dir "$SECRETS/nats" "$NATS_UID"
# Every variable the NATS configuration names (unquoted: "$JS.API..." is a subject) gets a
# password, the services' users first.
variables=""
for service in $SERVICES; do
    variables="$variables LEADS_NATS_$(upper "$service")_PASSWORD"
done
if [ -f "$NATS_CONF" ]; then
    variables="$variables $(grep -v '^[[:space:]]*#' "$NATS_CONF" | sed 's/"[^"]*"//g' | grep -o '\$[A-Z][A-Z0-9_]*' | tr -d '$' | sort -u | tr '\n' ' ')"
else
    echo "secrets: no NATS configuration at $NATS_CONF" >&2
    exit 1
fi
: >"$SECRETS/nats/env.new"
for variable in $variables; do
    generate "$SECRETS/nats/$variable"
    grep -q "^$variable=" "$SECRETS/nats/env.new" ||
        printf '%s=%s\n' "$variable" "$(cat "$SECRETS/nats/$variable")" >>"$SECRETS/nats/env.new"
done
chown "$NATS_UID:$NATS_UID" "$SECRETS/nats/env.new"
chmod 0400 "$SECRETS/nats/env.new"
mv "$SECRETS/nats/env.new" "$SECRETS/nats/env"

for service in $SERVICES; do
    generate "$SECRETS/migrate/roles/$service"
    chown "$LEADS_UID:$LEADS_UID" "$SECRETS/migrate/roles/$service"
    chmod 0400 "$SECRETS/migrate/roles/$service"
    dir "$SECRETS/$service" "$LEADS_UID"
    place "$SECRETS/migrate/roles/$service" "$SECRETS/$service/db-password" "$LEADS_UID" 0400
    place "$SECRETS/nats/LEADS_NATS_$(upper "$service")_PASSWORD" "$SECRETS/$service/nats-password" "$LEADS_UID" 0400
done
echo "secrets: ready"
