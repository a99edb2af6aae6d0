#!/usr/bin/env bash
# Validates the Kubernetes manifests offline, against the API schemas bundled in kubernetes-validate
# (strict: an unknown field fails), for the oldest and newest Kubernetes versions we claim: every file in
# deploy/kubernetes/ and the Secrets certs.sh makes (with throw-away certificates from $DOMICILE, the
# `domicile` binary). Installs the pinned kubernetes-validate with pip if it is missing. Prints
# `kubernetes_manifests: N passed, M failed` (one per resource and version).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pinned=1.37.0
versions=(1.30 1.37)
# Run as a module of the python3 it is installed into: no dependence on a scripts directory on PATH.
validate() { python3 -m kubernetes_validate "$@"; }
if [ "$(validate --version 2>/dev/null)" != "$pinned" ]; then
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
    "kubernetes-validate==$pinned"
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
DOMICILE=${DOMICILE:-domicile} DOMICILE_NAMESPACE=domicile "$here/certs.sh" --print "$scratch/certs" \
  > "$scratch/secrets.yaml" 2>/dev/null
passed=0
failed=0
for version in "${versions[@]}"; do
  set +e
  out=$(validate --strict --kubernetes-version "$version" "$here"/*.yaml "$scratch/secrets.yaml" 2>&1)
  code=$?
  set -e
  printf '%s\n' "$out" | grep -v ' passed for resource ' || true
  passed=$((passed + $(printf '%s\n' "$out" | grep -c ' passed for resource ' || true)))
  # A resource that failed its schema, one of a kind with no schema (a typo), and a file that is not YAML
  # (the validator then exits non-zero without a line per resource) each count as one failure.
  refused=$(printf '%s\n' "$out" | grep -c -e 'did not validate' -e "Couldn't find schema" || true)
  if [ "$code" -ne 0 ] && [ "$refused" -eq 0 ]; then refused=1; fi
  failed=$((failed + refused))
done
echo "kubernetes_manifests: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
