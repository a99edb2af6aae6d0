#!/usr/bin/env bash
# Brings up the five-site Compose cluster and waits until every node serves its groups:
#   1. builds the image from this checkout (deploy/image/build.sh; nothing is pulled),
#   2. makes the certificates once, with the one-shot `certs` service (`domicile certs` in a container),
#      into deploy/compose/state/certs (the cluster CA, one per node, one for the client `demo`),
#   3. starts the five nodes, each on its own address, and polls GET /ready on 127.0.0.1:7201..7205.
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
for entry in "${sites[@]}"; do mkdir -p "$state/data/n${entry%%:*}"; done

compose up --detach
deadline=$((SECONDS + 120))
for entry in "${sites[@]}"; do
  admin=127.0.0.1:720${entry%%:*}
  until curl --silent --fail --max-time 2 "http://$admin/ready" >/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "up.sh: node ${entry%%:*} (${entry#*:}) is not ready after 120 s: $(curl --silent --max-time 2 "http://$admin/ready")" >&2
      echo "up.sh: its log: docker-compose --project-name domicile --file $here/docker-compose.yml logs ${entry#*:}" >&2
      exit 1
    fi
    sleep 1
  done
done
cat <<DONE
Five nodes ready. From the repository's root:
  domicile status --admin 127.0.0.1:7201
  DOMICILE_ENDPOINTS=n1@127.0.0.1:7101,n2@127.0.0.1:7102,n3@127.0.0.1:7103,n4@127.0.0.1:7104,n5@127.0.0.1:7105 \\
  DOMICILE_CERTS=deploy/compose/state/certs DOMICILE_CLIENT=demo cargo run -p client --example store_user_records
Tear down: deploy/compose/down.sh
DONE
