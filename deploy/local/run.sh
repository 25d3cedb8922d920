#!/usr/bin/env bash
# `make run`: the whole system on this machine, in one process, until Ctrl-C.
set -euo pipefail
eval "$(deploy/local/infra.sh)"
cargo build --release -p leads --bin leads >&2

# Authentication is on (a service without a key refuses to start, and nothing here sets
# LEADS_AUTH_DISABLED): a local HS256 key, made once, signs the services' own tokens and the
# operator token printed below (docs/security.md). Keep .data/ private.
key_dir=.data/auth
export LEADS_AUTH_SIGNING_KEY_FILE="${LEADS_AUTH_SIGNING_KEY_FILE:-$key_dir/local.key}"
if [[ ! -s "$LEADS_AUTH_SIGNING_KEY_FILE" ]]; then
  mkdir -p "$(dirname "$LEADS_AUTH_SIGNING_KEY_FILE")"
  chmod 700 "$(dirname "$LEADS_AUTH_SIGNING_KEY_FILE")"
  (umask 077; head -c 48 /dev/urandom | base64 | tr -d '\n' >"$LEADS_AUTH_SIGNING_KEY_FILE")
  echo "made a local signing key in $LEADS_AUTH_SIGNING_KEY_FILE" >&2
fi
org="${LEADS_ORG:-acme}"
# The operator token goes to a private file, never to the terminal or a command line.
mkdir -p "$key_dir" && chmod 700 "$key_dir"
token_file="$key_dir/operator.token"
(umask 077; ./target/release/leads token --org "$org" --role operator --sub "${USER:-operator}" --ttl 24h \
  >"$token_file")
export LEADS_METRICS_ADDR="${LEADS_METRICS_ADDR:-127.0.0.1:9464}"
cat >&2 <<INFO

  lead platform starting (Ctrl-C stops it)
    console     http://127.0.0.1:${LEADS_CONSOLE_PORT:-8080}   the Leads page (sign-in link below)
    gRPC        ingest 127.0.0.1:50051  lead 127.0.0.1:50052  qualification 127.0.0.1:50053
                assignment 127.0.0.1:50054  followup 127.0.0.1:50055  broadcast 127.0.0.1:50056
                people 127.0.0.1:50057  notifications 127.0.0.1:50058
                (each serves grpc.health.v1.Health and server reflection without a token)
    NATS        $LEADS_NATS_URL   publish InteractionEvents on interactions.<org_id>
    Postgres    $LEADS_DATABASE_URL
    metrics     http://$LEADS_METRICS_ADDR/metrics

  an operator token for organisation $org, valid 24 hours, is in $token_file
  (more: leads token --org <org> --role operator > <file>):
    export LEADS_TOKEN_FILE=$token_file

    ./target/release/leads leads --org $org
    LEADS_TOKEN=\$(cat \$LEADS_TOKEN_FILE) grpcurl -plaintext -expand-headers \\
      -H 'authorization: Bearer \${LEADS_TOKEN}' -d '{"org_id":"$org"}' 127.0.0.1:50052 leads.v1.LeadService/ListLeads

INFO

# Once the people service answers, the organisation gets an admin, admin@<org>, on the first
# start, and a one-click sign-in link for them is printed beside the endpoints: the console
# signs them in with it once, within people.sign_in_code_ttl_secs (ten minutes).
admin_link() {
  local leads=./target/release/leads server=$1 admin="admin@$org" added link
  local addr="${LEADS_GRPC_HOST:-127.0.0.1}:${LEADS_GRPC_PEOPLE_PORT:-50057}"
  export LEADS_PEOPLE_ENDPOINT="${LEADS_PEOPLE_ENDPOINT:-http://$addr}"
  until "$leads" health --addr "$addr" --service leads.v1.PeopleService >/dev/null 2>&1; do
    kill -0 "$server" 2>/dev/null || return 0
    sleep 0.5
  done
  if ! added=$("$leads" people add --org "$org" --email "$admin" --name Admin --role admin --if-absent 2>/dev/null) ||
    ! link=$("$leads" people sign-in-link --org "$org" --email "$admin" 2>/dev/null); then
    echo "  (no sign-in link for $admin: ./target/release/leads people sign-in-link --org $org --email $admin says why)" >&2
    return 0
  fi
  local password_line=""
  if [[ -n "$added" ]]; then
    password_line="
    (made now; a password for it, if wanted: $(grep -o 'http[^ ]*/set-password?code=[^ ]*' <<<"$added" || true))"
  fi
  cat >&2 <<LINK

  sign in to the console as $admin (admin of $org), once, within ten minutes:
    $link$password_line
  (another link: ./target/release/leads people sign-in-link --org $org --email $admin)

LINK
}
case ",${LEADS_SERVICES:-all}," in
  *,all,* | *,people,*) admin_link $$ & ;;
esac
exec ./target/release/leads run --services "${LEADS_SERVICES:-all}"
