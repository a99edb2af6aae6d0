#!/usr/bin/env bash
# Makes the cluster's certificates with `domicile certs` and stores them as Kubernetes Secrets:
# `domicile-node-N` (ca.pem, node.pem, node.key) for each node, mounted by its StatefulSet,
# `domicile-client-NAME` (ca.pem, client.pem, client.key) for each client service, and
# `domicile-operator-NAME` (ca.pem, operator.pem, operator.key) for each operator — the only certificate
# the admin endpoints take for a change; mount it in an operator pod (labelled domicile.io/operator=true)
# and point DOMICILE_CA, DOMICILE_OPERATOR_CERT and DOMICILE_OPERATOR_KEY at its files.
#
#   deploy/kubernetes/certs.sh DIR            # make what DIR lacks, then `kubectl apply` the Secrets
#   deploy/kubernetes/certs.sh --print DIR    # the same Secrets as YAML on stdout, nothing applied
#
# DIR keeps the CA's private key (ca.key): keep it out of the repository and offline; it is needed only to
# issue more certificates. Existing files are reused, so a second run issues only what is missing; delete
# a node's files to renew them (then restart its pod). The site of each node and its country come from the
# topology in 01-configmap.yaml, as the nodes read it. Environment: DOMICILE (the binary, default
# `domicile` on PATH), DOMICILE_NAMESPACE (default `domicile`), DOMICILE_CLIENTS (default `demo`),
# DOMICILE_OPERATORS (default `ops`), DOMICILE_NODES (default `1:dublin-a 2:dublin-b 3:hamar
# 4:frankfurt 5:ashburn`).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
print=false
if [ "${1:-}" = --print ]; then print=true; shift; fi
if [ $# -ne 1 ]; then
  echo "usage: $0 [--print] DIR" >&2
  exit 2
fi
dir=$1
domicile=${DOMICILE:-domicile}
namespace=${DOMICILE_NAMESPACE:-domicile}
clients=${DOMICILE_CLIENTS:-demo}
operators=${DOMICILE_OPERATORS:-ops}
nodes=${DOMICILE_NODES:-1:dublin-a 2:dublin-b 3:hamar 4:frankfurt 5:ashburn}

mkdir -p "$dir"
chmod 700 "$dir"
# The topology exactly as the ConfigMap gives it to the nodes.
awk '/^  topology.toml: \|/ { inside = 1; next } inside && /^  [^ ]/ { inside = 0 }
     inside { sub(/^    /, ""); print }' "$here/01-configmap.yaml" > "$dir/topology.toml"
{
  if [ ! -f "$dir/ca.pem" ]; then "$domicile" certs init --dir "$dir" --cluster domicile; fi
  for entry in $nodes; do
    id=${entry%%:*}
    if [ ! -f "$dir/node-$id.pem" ]; then
      "$domicile" certs node --id "$id" --site "${entry#*:}" --topology "$dir/topology.toml" --dir "$dir"
    fi
  done
  for name in $clients; do
    if [ ! -f "$dir/client-$name.pem" ]; then "$domicile" certs client --name "$name" --dir "$dir"; fi
  done
  for name in $operators; do
    if [ ! -f "$dir/operator-$name.pem" ]; then "$domicile" certs operator --name "$name" --dir "$dir"; fi
  done
} >&2

# One Secret: its name, then key=file pairs.
secret() {
  local name=$1
  shift
  printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: %s\n' "$name" "$namespace"
  printf '  labels:\n    app.kubernetes.io/name: domicile\ntype: Opaque\ndata:\n'
  for pair in "$@"; do
    printf '  %s: %s\n' "${pair%%=*}" "$(base64 -w0 < "${pair#*=}")"
  done
}
manifests() {
  for entry in $nodes; do
    id=${entry%%:*}
    secret "domicile-node-$id" "ca.pem=$dir/ca.pem" "node.pem=$dir/node-$id.pem" "node.key=$dir/node-$id.key"
  done
  for name in $clients; do
    secret "domicile-client-$name" "ca.pem=$dir/ca.pem" "client.pem=$dir/client-$name.pem" \
      "client.key=$dir/client-$name.key"
  done
  for name in $operators; do
    secret "domicile-operator-$name" "ca.pem=$dir/ca.pem" "operator.pem=$dir/operator-$name.pem" \
      "operator.key=$dir/operator-$name.key"
  done
}
if $print; then
  manifests
else
  manifests | kubectl apply -f -
fi
