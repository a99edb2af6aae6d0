#!/usr/bin/env bash
# A rehearsal of the Kubernetes manifests without Kubernetes: each StatefulSet's pod as a Docker container
# on a private network, with what the manifests give it — the ConfigMap's files, the Secret certs.sh makes
# (files mode 0440, group 65532 as fsGroup makes them), the pod's full DNS name as a network alias and the
# namespace's search domain (so the configs' short names, domicile-SITE-0.domicile, resolve as in a pod),
# its args, user 65532, a read-only root and no capabilities. Then, as the kubelet would:
# waits for every pod's readiness path to answer 200 (over HTTPS, the certificate unchecked, as the
# kubelet probes), stops one pod (SIGTERM: the node hands its leaderships over) and starts it again at
# another address, as a rescheduled pod, and waits until it is ready again and its peers have found it. Stops and removes everything it started, also on failure.
#
#   deploy/kubernetes/rehearse.sh      # after deploy/image/build.sh; needs Docker, curl, python3 with PyYAML
#
# What it does not rehearse: scheduling and node affinity, the Service and NetworkPolicy, the
# PodDisruptionBudget, volume provisioning, cluster DNS itself (Docker's resolver answers here).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=${DOMICILE_IMAGE:-domicile:local}
net=${DOMICILE_REHEARSAL_NET:-172.31.118}
network=domicile-rehearsal
scratch=$(mktemp -d)
started=()
cleanup() {
  for name in "${started[@]}"; do docker rm --force "$name" >/dev/null 2>&1 || true; done
  docker network rm "$network" >/dev/null 2>&1 || true
  rm -rf "$scratch"
}
trap cleanup EXIT

# certs.sh runs the image's binary to make the certificates.
cat > "$scratch/domicile" <<EOF
#!/bin/sh
exec docker run --rm --user "$(id -u):$(id -g)" --volume "$scratch:$scratch" --workdir "$scratch" "$image" "\$@"
EOF
chmod +x "$scratch/domicile"
DOMICILE="$scratch/domicile" "$here/certs.sh" --print "$scratch/certs" > "$scratch/secrets.yaml" 2>/dev/null

# Each pod's files, and its name, ordinal address, args and readiness URL scheme and path.
python3 - "$here" "$scratch" > "$scratch/pods" <<'EOF'
import base64, os, sys, yaml
here, scratch = sys.argv[1], sys.argv[2]
config = yaml.safe_load(open(f"{here}/01-configmap.yaml"))
os.makedirs(f"{scratch}/config")
for key, text in config["data"].items():
    open(f"{scratch}/config/{key}", "w").write(text)
secrets = {s["metadata"]["name"]: s["data"] for s in yaml.safe_load_all(open(f"{scratch}/secrets.yaml")) if s}
for index, sts in enumerate(s for s in yaml.safe_load_all(open(f"{here}/04-statefulsets.yaml")) if s):
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    secret = next(v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v)
    name = sts["metadata"]["name"]
    for key, value in secrets[secret].items():
        path = f"{scratch}/{name}/tls/{key}"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").write(base64.b64decode(value))
        os.chmod(path, 0o440)
    os.makedirs(f"{scratch}/{name}/data")
    probe = container["readinessProbe"]["httpGet"]
    print(name, index + 21, probe.get("scheme", "HTTP").lower() + "://{address}:7200" + probe["path"],
          "|".join(container["args"]))
EOF
# fsGroup 65532: the pod's group owns its secret files and its volume.
chown -R 0:65532 "$scratch"/domicile-*/tls
chown -R 65532:65532 "$scratch"/domicile-*/data

docker network create --subnet "$net.0/24" "$network" >/dev/null
run_pod() { # name address args
  local name=$1 address=$2 args
  IFS='|' read -r -a args <<< "$3"
  docker run --detach --name "$name-0" --hostname "$name-0" --network "$network" --ip "$address" \
    --network-alias "$name-0.domicile.domicile.svc.cluster.local" \
    --dns-search domicile.svc.cluster.local --dns-search svc.cluster.local --dns-search cluster.local --user 65532:65532 --read-only --cap-drop ALL \
    --security-opt no-new-privileges:true --env NO_COLOR=1 \
    --volume "$scratch/config:/etc/domicile/config:ro" --volume "$scratch/$name/tls:/etc/domicile/tls:ro" \
    --volume "$scratch/$name/data:/var/lib/domicile" "$image" "${args[@]}" >/dev/null
  started+=("$name-0")
}
wait_ready() { # address url (with {address})
  local deadline=$((SECONDS + 60)) url=${2//\{address\}/$1}
  until curl --silent --insecure --fail --max-time 2 "$url" >/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "rehearse.sh: $1 not ready after 60 s: $(curl --silent --insecure --max-time 2 "$url")" >&2
      exit 1
    fi
    sleep 1
  done
}
while read -r name ordinal path args _; do run_pod "$name" "$net.$ordinal" "$args"; done < "$scratch/pods"
start=$SECONDS
while read -r name ordinal path _; do wait_ready "$net.$ordinal" "$path"; done < "$scratch/pods"
echo "every pod ready after $((SECONDS - start)) s"

read -r name ordinal path args < "$scratch/pods"
docker stop --time 60 "$name-0" >/dev/null
echo "$name-0 stopped: exit code $(docker inspect --format '{{.State.ExitCode}}' "$name-0"), \
$(docker logs "$name-0" 2>&1 | grep -o 'leaderships handed over.*' || echo 'no handover logged')"
docker rm "$name-0" >/dev/null
run_pod "$name" "$net.$((ordinal + 100))" "$args"
start=$SECONDS
wait_ready "$net.$((ordinal + 100))" "$path"
echo "$name-0 ready again at $net.$((ordinal + 100)) after $((SECONDS - start)) s"
# Over HTTPS with the pod's CA certificate: the peers' admin endpoints answer reads, and check as nodes.
docker exec "$name-0" /domicile status --admin 127.0.0.1:7200 --admin-ca /etc/domicile/tls/ca.pem
