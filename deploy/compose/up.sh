#!/usr/bin/env bash
# Brings up the five-site Compose cluster and waits until every node serves its groups:
#   1. builds the image from this checkout (deploy/image/build.sh; nothing is pulled),
#   2. makes the certificates once, with the one-shot `certs` service (`domicile certs` in a container),
#      into deploy/compose/state/certs (the cluster CA, one per node, one for the client `demo`, one for
#      the operator `ops`, whose certificate the admin endpoints require for any change),
#   3. starts the five nodes, each on its own address, and polls GET /ready on 127.0.0.1:7201..7205 over
#      HTTPS, checking each node's certificate against the cluster CA.
# Tear down with deploy/compose/down.sh. Needs Docker, docker-compose (1.29+) and curl.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
"$here/../image/build.sh"

export DOMICILE_UID DOMICILE_GID
DOMICILE_UID=$(id -u)
DOMICILE_GID=$(id -g)
compose() { docker-compose --project-name domicile --file "$here/docker-compose.yml" "$@"; }
state=$here/state
sites=(1:dublin-a 2:dublin-b 3:hamar 4:frankfurt 5:ashburn)

# The client certificate is made last: without it, certificates were never completed, and no node can
# have stored data under them.
if [ ! -f "$state/certs/client-demo.pem" ]; then
  rm -rf "$state"
  mkdir -p "$state/certs"
  compose run --rm certs init --dir /certs --cluster compose
  for entry in "${sites[@]}"; do
    compose run --rm certs node --id "${entry%%:*}" --site "${entry#*:}" \
      --topology /etc/domicile/topology.toml --dir /certs
  done
  compose run --rm certs client --name demo --dir /certs
fi
# Certificates made before the admin endpoints required an operator lack this one.
if [ ! -f "$state/certs/operator-ops.pem" ]; then
  compose run --rm certs operator --name ops --dir /certs
fi
for entry in "${sites[@]}"; do mkdir -p "$state/data/n${entry%%:*}"; done

compose up --detach
deadline=$((SECONDS + 120))
# The node's certificate names node-N.domicile.internal: curl checks it for that name, at the published port.
ready() { # node id
  curl --silent --max-time 2 --cacert "$state/certs/ca.pem" \
    --resolve "node-$1.domicile.internal:720$1:127.0.0.1" "https://node-$1.domicile.internal:720$1/ready" "${@:2}"
}
for entry in "${sites[@]}"; do
  until ready "${entry%%:*}" --fail >/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "up.sh: node ${entry%%:*} (${entry#*:}) is not ready after 120 s: $(ready "${entry%%:*}")" >&2
      echo "up.sh: its log: docker-compose --project-name domicile --file $here/docker-compose.yml logs ${entry#*:}" >&2
      exit 1
    fi
    sleep 1
  done
done
cat <<DONE
Five nodes ready. From the repository's root (the operator's certificates, once per shell):
  export DOMICILE_CERTS=deploy/compose/state/certs DOMICILE_OPERATOR=ops
  domicile status --admin 127.0.0.1:7201
  DOMICILE_ENDPOINTS=n1@127.0.0.1:7101,n2@127.0.0.1:7102,n3@127.0.0.1:7103,n4@127.0.0.1:7104,n5@127.0.0.1:7105 \\
  DOMICILE_CERTS=deploy/compose/state/certs DOMICILE_CLIENT=demo cargo run -p client --example store_user_records
Tear down: deploy/compose/down.sh
DONE
