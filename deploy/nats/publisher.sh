#!/usr/bin/env bash
# Prints the NATS user of one publishing organisation, for the `users` list of
# deploy/nats/nats-server.conf: it may publish interactions.<org> and broadcasts.<org>.> and
# nothing else, and receives its acks under its own inbox prefix, _INBOX.publisher-<org> (the
# publisher's client sets it). Its password comes from PUBLISHER_<ORG>_PASSWORD in
# nats-server's environment.
#   deploy/nats/publisher.sh acme
set -euo pipefail
org="${1:?usage: $0 <org_id>}"
if [[ ! "$org" =~ ^[A-Za-z0-9_-]{1,64}$ ]]; then
  echo "an organisation id holds 1 to 64 letters, digits, '_' or '-'" >&2
  exit 2
fi
var="PUBLISHER_$(tr 'a-z-' 'A-Z_' <<<"$org")_PASSWORD"
sed -n '/BEGIN publisher template/,/END publisher template/p' "$(dirname "$0")/nats-server.conf" |
  sed '1d;$d' | sed "s/PUBLISHER_ORG_PASSWORD/$var/; s/ORG/$org/g"
