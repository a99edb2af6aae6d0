#!/usr/bin/env bash
# Tears the Compose cluster down: stops every node (SIGTERM, then SIGKILL after 30 s), removes its
# containers, network and volumes, and deletes deploy/compose/state (certificates, keys, node data).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
docker-compose --project-name domicile --file "$here/docker-compose.yml" --profile certs \
  down --volumes --remove-orphans --timeout 30
rm -rf "$here/state"
