#!/usr/bin/env bash
# A real one-node Kubernetes 1.20 cluster on this machine, for the Kubernetes tests.
#
#   scripts/k8s-cluster.sh packages install Debian's parts (etcd, containerd, runc, CNI, Go, …)
#   scripts/k8s-cluster.sh build    install them, build the control plane and kubelet
#                                   from Debian's `kubernetes` source package (cached)
#   scripts/k8s-cluster.sh up       build if needed, start everything, write $DIR/env
#   scripts/k8s-cluster.sh down     stop everything and leave nothing behind
#   scripts/k8s-cluster.sh status   is it up?
#
# What runs: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, a kubelet with
# containerd + runc, and a loopback OCI registry (docker-registry) the kubelet pulls from.
# Pods get addresses on a bridge this script creates (10.244.0.0/24); nothing is masqueraded or
# forwarded off the machine, and there is no kube-proxy and no cluster DNS: the gateway routes
# to pod addresses itself. Every listener is on 127.0.0.1, on free ports picked at start, but
# for two on the bridge's own address, which only pods and this machine reach: the kubelet, and
# the API server (pods such as an in-cluster gateway talk to it there: with no kube-proxy, the
# `kubernetes` Service IP leads nowhere). Root only.
#
# Settings (environment): STREAMFAAS_K8S_DIR (state, default /var/tmp/streamfaas-k8s),
# STREAMFAAS_K8S_CACHE (built binaries, images; default /var/cache/streamfaas-k8s),
# STREAMFAAS_K8S_BRIDGE (default sfk8s0), STREAMFAAS_K8S_SUBNET_PREFIX (default 10.244.0).
set -euo pipefail

DIR=${STREAMFAAS_K8S_DIR:-/var/tmp/streamfaas-k8s}
CACHE=${STREAMFAAS_K8S_CACHE:-/var/cache/streamfaas-k8s}
BRIDGE=${STREAMFAAS_K8S_BRIDGE:-sfk8s0}
NET=${STREAMFAAS_K8S_SUBNET_PREFIX:-10.244.0}
VERSION=1.20.2
BIN=$CACHE/bin-$VERSION
NODE=streamfaas-node
PAUSE_IMAGE=localhost/pause:3.4.1
export DEBIAN_FRONTEND=noninteractive

log() { echo "k8s-cluster: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (containerd, the kubelet and the bridge need it)"

# ---- build ------------------------------------------------------------------------------------
PACKAGES=(golang-go golang-github-modern-go-reflect2-dev dpkg-dev rsync jq etcd-server etcd-client containerd runc
          containernetworking-plugins buildah skopeo umoci mmdebstrap busybox-static
          docker-registry iproute2 openssl gcc libc6-dev make curl)

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # The packages start their own daemons where an init system runs them; ours are private.
  for svc in containerd docker-registry etcd; do
    command -v systemctl >/dev/null 2>&1 && systemctl disable --now "$svc" >/dev/null 2>&1 || true
  done
}

build() {
  install_packages
  if [ -x "$BIN/kubelet" ] && [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/pause" ]; then
    log "binaries cached in $BIN"
    return
  fi
  local work=$CACHE/build
  mkdir -p "$work/apt/parts" "$work/apt/lists/partial" "$work/src" "$work/home"
  # deb-src lists in a private folder: /etc/apt stays as it is.
  cp /etc/apt/sources.list.d/debian.sources "$work/apt/parts/"
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$work/apt/parts/src.sources"
  local aptopts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/apt/parts" -o "Dir::State::Lists=$work/apt/lists")
  apt-get "${aptopts[@]}" update -q >/dev/null
  local tree
  tree=$(find "$work/src" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
  if [ -z "$tree" ]; then
    (cd "$work/src" && apt-get "${aptopts[@]}" source -q kubernetes >/dev/null)
    tree=$(find "$work/src" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
  fi
  log "building kube-apiserver, kube-controller-manager, kube-scheduler and kubelet in $tree (5-7 min)"
  (
    cd "$tree"
    mkdir -p .go/src/k8s.io && ln -sfn ../../.. .go/src/k8s.io/kubernetes  # GOPATH mode, as debian/rules
    # Kubernetes 1.20 vendors reflect2 1.0.1, which panics under Go >= 1.18 when the API server
    # writes JSON with maps in it (every Node, every labelled object): take Debian's 1.0.2.
    rsync -aL --delete /usr/share/gocode/src/github.com/modern-go/reflect2/ vendor/github.com/modern-go/reflect2/
    export GOPATH=$PWD/.go GOCACHE=$work/gocache CGO_ENABLED=0 HOME=$work/home
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet" \
         KUBE_GIT_VERSION=v$VERSION KUBE_GIT_TREE_STATE=clean >"$work/make.log" 2>&1 ||
      { tail -n 20 "$work/make.log" >&2; exit 1; }
    mkdir -p "$BIN.tmp"
    cp _output/bin/kube-apiserver _output/bin/kube-controller-manager _output/bin/kube-scheduler _output/bin/kubelet "$BIN.tmp/"
    gcc -Os -static -o "$BIN.tmp/pause" build/pause/linux/pause.c
  )
  rm -rf "$BIN" && mv "$BIN.tmp" "$BIN"
  rm -rf "$work/gocache" "$tree/_output" "$tree/.go"  # 2.6 GB; the binaries are what we keep
  log "built into $BIN"
}

# ---- helpers ----------------------------------------------------------------------------------
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_bg() {  # start_bg NAME CMD...: a daemon in its own session, PID in $DIR/pids/NAME
  local name=$1; shift
  setsid "$@" >"$DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$DIR/pids/$name"
}

alive() { [ -f "$DIR/pids/$1" ] && kill -0 "$(cat "$DIR/pids/$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS WHAT CMD...: poll until CMD succeeds
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "timed out waiting for $what"
      tail -n 15 "$DIR"/logs/*.log >&2 || true
      return 1
    fi
    sleep 0.3
  done
}

api() {  # api PATH [curl args...]: the API server as the admin
  local path=$1; shift
  curl --http1.1 -fsS --cacert "$DIR/pki/apiserver.crt" -H "Authorization: Bearer $(cat "$DIR/token")" "$@" "https://$NET.1:$(cat "$DIR/ports/apiserver")$path"
}

stop_pid() {  # stop_pid NAME [GRACE]: TERM, then KILL after GRACE seconds
  local name=$1 grace=${2:-10} pid
  [ -f "$DIR/pids/$name" ] || return 0
  pid=$(cat "$DIR/pids/$name")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + grace))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$DIR/pids/$name"
}

# ---- up ---------------------------------------------------------------------------------------
write_pki() {
  local pki=$DIR/pki
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=streamfaas-test-apiserver" \
    -keyout "$pki/apiserver.key" -out "$pki/apiserver.crt" \
    -addext "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,IP:$NET.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:localhost" \
    2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  python3 -c 'import secrets; print(secrets.token_hex(24))' > "$DIR/token"
  chmod 600 "$DIR/token" "$pki/apiserver.key" "$pki/sa.key"
  printf '%s,admin,admin,"system:masters"\n' "$(cat "$DIR/token")" > "$DIR/tokens.csv"
  chmod 600 "$DIR/tokens.csv"
}

write_kubeconfig() {
  python3 - "$DIR" "$NET.1" <<'EOF'
import base64, pathlib, sys
d = pathlib.Path(sys.argv[1])
host = sys.argv[2]
ca = base64.b64encode((d / "pki/apiserver.crt").read_bytes()).decode()
port = (d / "ports/apiserver").read_text().strip()
token = (d / "token").read_text().strip()
text = f"""apiVersion: v1
kind: Config
clusters:
- name: streamfaas-test
  cluster:
    server: https://{host}:{port}
    certificate-authority-data: {ca}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: streamfaas-test
  context: {{cluster: streamfaas-test, user: admin}}
current-context: streamfaas-test
"""
path = d / "kubeconfig"
path.write_text(text)
path.chmod(0o600)
EOF
}

save_baseline() {
  mkdir -p "$DIR/baseline"
  ip -o link show | awk -F': ' '{print $2}' | sort > "$DIR/baseline/links"
  for f in /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/conf/*/forwarding; do
    echo "$f $(cat "$f")"
  done > "$DIR/baseline/sysctls"
}

setup_network() {
  echo 1 > /proc/sys/net/ipv4/ip_forward
  # Forwarding on, but only the bridge's own interfaces may forward: nothing crosses to or from
  # the machine's interface. (The CNI bridge plugin turns ip_forward on anyway.)
  for f in /proc/sys/net/ipv4/conf/*/forwarding; do
    case "$f" in */conf/all/*) ;; *) echo 0 > "$f" ;; esac
  done
  ip link add "$BRIDGE" type bridge
  ip addr add "$NET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  mkdir -p "$DIR/cni/net.d" "$DIR/cni/ipam"
  cat > "$DIR/cni/net.d/10-streamfaas.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "streamfaas-test", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$NET.0/24", "gateway": "$NET.1"}]],
            "dataDir": "$DIR/cni/ipam"}}]}
EOF
}

start_registry() {
  local port
  port=$(free_port)
  echo "$port" > "$DIR/ports/registry"
  mkdir -p "$DIR/registry"
  cat > "$DIR/registry/config.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $DIR/registry/data}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$port}
EOF
  start_bg registry docker-registry serve "$DIR/registry/config.yml"
  wait_for 20 "the registry" curl -fsS "http://127.0.0.1:$port/v2/"
}

start_containerd() {
  local reg=127.0.0.1:$(cat "$DIR/ports/registry") c=$DIR/containerd
  mkdir -p "$c/root" "$c/state" "$c/opt" "$c/certs.d/$reg"
  cat > "$c/certs.d/$reg/hosts.toml" <<EOF
server = "http://$reg"
[host."http://$reg"]
  capabilities = ["pull", "resolve"]
EOF
  cat > "$c/config.toml" <<EOF
version = 2
root = "$c/root"
state = "$c/state"
[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"
[debug]
  address = "$c/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$c/opt"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$c/certs.d"
EOF
  start_bg containerd containerd --config "$c/config.toml"
  wait_for 30 "containerd" ctr -a "$c/containerd.sock" version
  # The pod sandbox image: a static pause binary in a FROM-scratch image, imported directly.
  if [ ! -f "$CACHE/pause.tar" ]; then
    local b=(buildah --storage-driver vfs --root "$CACHE/buildah/root" --runroot "$DIR/buildah-run")
    local ctr_id
    ctr_id=$("${b[@]}" from scratch)
    "${b[@]}" copy "$ctr_id" "$BIN/pause" /pause >/dev/null
    "${b[@]}" config --entrypoint '["/pause"]' --user 65535:65535 "$ctr_id"
    "${b[@]}" commit --rm "$ctr_id" "$PAUSE_IMAGE" >/dev/null
    "${b[@]}" push "$PAUSE_IMAGE" "docker-archive:$CACHE/pause.tar.tmp:$PAUSE_IMAGE" >/dev/null
    mv "$CACHE/pause.tar.tmp" "$CACHE/pause.tar"
  fi
  ctr -a "$c/containerd.sock" -n k8s.io images import "$CACHE/pause.tar" >/dev/null
}

start_control_plane() {
  local etcd_client etcd_peer api cm sched
  etcd_client=$(free_port); etcd_peer=$(free_port); api=$(free_port); cm=$(free_port); sched=$(free_port)
  echo "$api" > "$DIR/ports/apiserver"
  start_bg etcd etcd --name streamfaas-test --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "streamfaas-test=http://127.0.0.1:$etcd_peer"
  start_bg apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_client" --bind-address "$NET.1" --advertise-address "$NET.1" \
    --secure-port "$api" --insecure-port 0 --cert-dir "$DIR/pki" \
    --tls-cert-file "$DIR/pki/apiserver.crt" --tls-private-key-file "$DIR/pki/apiserver.key" \
    --token-auth-file "$DIR/tokens.csv" --authorization-mode Node,RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$DIR/pki/sa.pub" --service-account-signing-key-file "$DIR/pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 --endpoint-reconciler-type none --allow-privileged=true \
    --kubelet-preferred-address-types InternalIP --enable-admission-plugins NodeRestriction
  wait_for 60 "the API server" api /readyz
  write_kubeconfig
  local kc=$DIR/kubeconfig
  start_bg controller-manager "$BIN/kube-controller-manager" --kubeconfig "$kc" --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port "$cm" --port 0 \
    --service-account-private-key-file "$DIR/pki/sa.key" --root-ca-file "$DIR/pki/apiserver.crt" \
    --controllers '*,-nodeipam,-attachdetach,-persistentvolume-binder,-ttl'
  start_bg scheduler "$BIN/kube-scheduler" --kubeconfig "$kc" --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port "$sched" --port 0
  wait_for 60 "the default service account" api /api/v1/namespaces/default/serviceaccounts/default
}

start_kubelet() {
  local k=$DIR/kubelet healthz
  healthz=$(free_port)
  mkdir -p "$k/root" "$k/pki" "$k/volume-plugins" "$k/seccomp"
  start_bg kubelet "$BIN/kubelet" --kubeconfig "$DIR/kubeconfig" \
    --container-runtime remote --container-runtime-endpoint "unix://$DIR/containerd/containerd.sock" \
    --cgroup-driver cgroupfs --fail-swap-on=false --root-dir "$k/root" --cert-dir "$k/pki" \
    --hostname-override "$NODE" --node-ip "$NET.1" --address "$NET.1" --port "$(free_port)" \
    --read-only-port 0 --healthz-bind-address 127.0.0.1 --healthz-port "$healthz" \
    --volume-plugin-dir "$k/volume-plugins" --seccomp-profile-root "$k/seccomp" \
    --pod-infra-container-image "$PAUSE_IMAGE" --cgroups-per-qos=false --enforce-node-allocatable= \
    --eviction-hard= --image-gc-high-threshold 100 --image-gc-low-threshold 99 \
    --make-iptables-util-chains=false --serialize-image-pulls=false \
    --node-status-update-frequency 2s --sync-frequency 5s \
    --kube-api-qps 50 --kube-api-burst 100 --event-qps 50 --event-burst 100
  # The API limits are Kubernetes 1.27's defaults. 1.20's (5 requests a second, bursts of 10)
  # throttled the status updates and events of pods started together: ten pods of a burst were
  # Ready after 14 s instead of 5-7 s (tests/k8s/test_autoscale_k8s.py).
  wait_for 90 "the node to be Ready" node_ready
}

node_ready() {
  api "/api/v1/nodes/$NODE" | python3 -c '
import json, sys
node = json.load(sys.stdin)
sys.exit(0 if any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"]) else 1)'
}

up() {
  if [ -f "$DIR/env" ] && alive apiserver && alive kubelet && node_ready 2>/dev/null; then
    log "already up: $DIR/env"
    return
  fi
  [ -d "$DIR" ] && down
  build
  mkdir -p "$DIR/pids" "$DIR/logs" "$DIR/ports"
  chmod 700 "$DIR"
  save_baseline
  write_pki
  setup_network
  start_registry
  start_containerd
  start_control_plane
  start_kubelet
  cat > "$DIR/env" <<EOF
export KUBECONFIG=$DIR/kubeconfig
export STREAMFAAS_K8S_REGISTRY=127.0.0.1:$(cat "$DIR/ports/registry")
export STREAMFAAS_K8S_API_HOST=$NET.1
export STREAMFAAS_K8S_API_PORT=$(cat "$DIR/ports/apiserver")
export STREAMFAAS_K8S_BRIDGE=$BRIDGE
export STREAMFAAS_K8S_POD_NETWORK=$NET.0/24
EOF
  log "up: source $DIR/env"
}

# ---- down -------------------------------------------------------------------------------------
down() {
  [ -d "$DIR" ] || { log "not up"; return 0; }
  local sock=$DIR/containerd/containerd.sock started
  started=$(cat "$DIR"/pids/* 2>/dev/null || true)
  if alive apiserver && [ -f "$DIR/token" ]; then
    # Workloads first, so the kubelet stops their containers itself.
    local ns
    for ns in $(api /api/v1/namespaces 2>/dev/null | python3 -c '
import json, sys
print(" ".join(n["metadata"]["name"] for n in json.load(sys.stdin)["items"]
      if n["metadata"]["name"] not in ("default", "kube-system", "kube-public", "kube-node-lease")))' || true); do
      api "/api/v1/namespaces/$ns" -X DELETE >/dev/null 2>&1 || true
    done
    if alive kubelet; then
      wait_for 60 "pods to go" no_pods || true
    fi
  fi
  stop_pid kubelet 10
  stop_pid scheduler 5
  stop_pid controller-manager 5
  stop_pid apiserver 10
  stop_pid etcd 10
  if alive containerd; then
    local id
    for id in $(ctr -a "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr -a "$sock" -n k8s.io tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    sleep 0.5
    for id in $(ctr -a "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr -a "$sock" -n k8s.io tasks delete -f "$id" >/dev/null 2>&1 || true
    done
    for id in $(ctr -a "$sock" -n k8s.io containers ls -q 2>/dev/null); do
      ctr -a "$sock" -n k8s.io containers delete "$id" >/dev/null 2>&1 || true
    done
  fi
  stop_pid containerd 10
  stop_pid registry 5
  # Stray shims: the runc shims of our containerd (their command line names our socket).
  local pid
  for pid in $(pgrep -f -- "-address $sock" 2>/dev/null || true); do kill -KILL "$pid" 2>/dev/null || true; done
  # Mounts under our folder, deepest first.
  awk -v d="$DIR" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  # Network namespaces made by containerd live under its state dir (netns_mounts_under_state_dir).
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"
  if [ -f "$DIR/baseline/sysctls" ]; then
    while read -r f v; do [ -e "$f" ] && echo "$v" > "$f" 2>/dev/null || true; done < "$DIR/baseline/sysctls"
  fi
  # Leftover veths whose peer went with a pod's namespace disappear with it; any left are ours.
  if [ -f "$DIR/baseline/links" ]; then
    ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort | comm -13 "$DIR/baseline/links" - |
      { grep '^veth' || true; } | while read -r l; do ip link delete "$l" 2>/dev/null || true; done
  fi
  # Pod cgroups (cgroupfs driver, no QoS tree): kubepods under each controller.
  local cg
  for cg in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/k8s.io /sys/fs/cgroup/kubepods /sys/fs/cgroup/k8s.io; do
    [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  rm -rf /var/log/pods /var/log/containers /var/lib/kubelet /var/lib/cni/results /etc/cni/net.d/cni.lock
  local left=()
  ip link show "$BRIDGE" >/dev/null 2>&1 && left+=("the bridge $BRIDGE")
  awk -v d="$DIR" 'index($2, d) == 1' /proc/self/mounts | grep -q . && left+=("mounts under $DIR")
  if [ -f "$DIR/baseline/sysctls" ]; then
    while read -r f v; do
      [ -e "$f" ] && [ "$(cat "$f")" != "$v" ] && left+=("$f")
    done < "$DIR/baseline/sysctls"
  fi
  for pid in $started; do
    kill -0 "$pid" 2>/dev/null && left+=("process $pid ($(tr '\0' ' ' < "/proc/$pid/cmdline" | cut -c1-60))")
  done
  rm -rf "$DIR"
  if [ "${#left[@]}" -gt 0 ]; then
    log "down, but left behind: ${left[*]}"
    return 1
  fi
  log "down, nothing left behind"
}

no_pods() {
  local n
  n=$(api /api/v1/pods | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["items"]))')
  [ "$n" = 0 ]
}

status() {
  if [ -f "$DIR/env" ] && alive apiserver && alive kubelet && node_ready 2>/dev/null; then
    echo "up: source $DIR/env"
  else
    echo "down"
    return 1
  fi
}

case "${1:-}" in
  packages) install_packages ;;
  build) build ;;
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 packages|build|up|down|status" >&2; exit 2 ;;
esac
