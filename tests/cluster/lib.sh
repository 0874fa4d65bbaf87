# Shared by the test cluster's scripts (build, up, down, restart-apiserver):
# versions, locations, ports, and the one place each component's command
# line is defined. Source it; it runs nothing by itself.

KUBE_VERSION=v1.37.2
KUBE_MAJOR=1
KUBE_MINOR=37

CLUSTER_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLUSTER_BIN="$(realpath -m "${SPECDEC_CLUSTER_BIN:-$HOME/.cache/specdec/cluster/bin-$KUBE_VERSION}")"
CLUSTER_DIR="$(realpath -m "${SPECDEC_CLUSTER_DIR:-$HOME/.cache/specdec/cluster/run}")"

# Everything listens on 127.0.0.1 only.
APISERVER_PORT="${SPECDEC_CLUSTER_PORT:-16443}"
ETCD_CLIENT_PORT="${SPECDEC_CLUSTER_ETCD_PORT:-23790}"
ETCD_PEER_PORT="$((ETCD_CLIENT_PORT + 10))"
KCM_PORT="${SPECDEC_CLUSTER_KCM_PORT:-16257}"
SCHEDULER_PORT="${SPECDEC_CLUSTER_SCHEDULER_PORT:-16259}"
KWOK_PORT="${SPECDEC_CLUSTER_KWOK_PORT:-16247}"
# Pod IPs that kwok hands out: loopback, so a real process on this host bound
# to a pod's IP is reachable from this host.
POD_CIDR="${SPECDEC_CLUSTER_POD_CIDR:-127.0.100.0/24}"
SERVICE_CIDR=10.96.0.0/16

# The real node: a kubelet with containerd and runc on this host, where pods
# really run (needs root). SPECDEC_CLUSTER_REAL_NODE=0 leaves it out: the
# control plane and the kwok nodes alone then need no root.
REAL_NODE="${SPECDEC_CLUSTER_REAL_NODE:-1}"
NODE_NAME=real-0
# A pod asks for the node with this label and tolerates this taint; the taint
# keeps every other pod (the operator tests' own) on the kwok nodes.
NODE_LABEL_KEY=specdec.io/node-kind
NODE_LABEL_VALUE=real
NODE_TAINT_KEY=specdec.io/real-node
NODE_TAINT_VALUE=true
NODE_TAINT_EFFECT=NoSchedule
# The node's address (the kubelet refuses a loopback one): a /32 of its own on
# an interface of its own. The API server reaches the kubelet there, and pods
# reach this host there.
NODE_IP="${SPECDEC_CLUSTER_NODE_IP:-172.31.255.1}"
NODE_IFACE="${SPECDEC_CLUSTER_NODE_IFACE:-specdec-node}"
# The node's pods get IPs from this range, on a bridge whose first address is
# this host's side; the host reaches the pods there.
NODE_POD_CIDR="${SPECDEC_CLUSTER_NODE_POD_CIDR:-172.31.254.0/24}"
NODE_BRIDGE="${SPECDEC_CLUSTER_NODE_BRIDGE:-specdec-pods}"
KUBELET_PORT="${SPECDEC_CLUSTER_KUBELET_PORT:-16250}"
KUBELET_HEALTHZ_PORT="${SPECDEC_CLUSTER_KUBELET_HEALTHZ_PORT:-16248}"
CNI_BIN_DIR="${SPECDEC_CLUSTER_CNI_BIN:-/usr/lib/cni}"
CONTAINERD_BIN="${SPECDEC_CLUSTER_CONTAINERD:-/usr/bin/containerd}"
# The pod sandbox image: the pause binary built here, imported by `up` (no
# registry is needed), under the name the kubelet of this release expects.
PAUSE_VERSION=3.10.2
PAUSE_IMAGE="registry.k8s.io/pause:$PAUSE_VERSION"

PKI="$CLUSTER_DIR/pki"
LOGS="$CLUSTER_DIR/logs"
PIDS="$CLUSTER_DIR/pids"
KUBECONFIG_FILE="$CLUSTER_DIR/kubeconfig"
# The real node's lasting state: containerd's images and snapshots, the
# kubelet's root directory (pod volumes), pod logs, configuration files.
NODE_DIR="$CLUSTER_DIR/node"
KUBELET_ROOT="$NODE_DIR/kubelet"
# Its runtime state, on tmpfs like a system containerd's (a reboot clears it
# together with the network namespaces and processes it describes), named by
# the API server port, which two clusters on one host never share: the
# containerd socket, its task bundles and pods' network namespaces, runc's
# state, the pod IPs handed out, the host settings to put back.
NODE_RUN="/run/specdec-cluster-$APISERVER_PORT"
CONTAINERD_SOCK="$NODE_RUN/containerd.sock"

# Start order; down stops them in reverse. The last two are the real node's
# (is_node_component).
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok containerd kubelet)

log() { echo "[cluster] $*" >&2; }
die() { echo "[cluster] error: $*" >&2; exit 1; }

# step WHAT: names what the script does now; a command that fails unexpectedly
# is then reported with it (see report_failed_step).
STEP="starting"
step() { STEP="$*"; }
# report_failed_step: for a script's ERR trap (with set -E), once, at the top level.
report_failed_step() {
  local rc=$? line="$1"
  ((BASH_SUBSHELL)) || echo "[cluster] error: failed while $STEP (exit status $rc, line $line)" >&2
}

# lock_cluster: holds a lock on the state directory until the script exits,
# so that concurrent up/down/restart-apiserver runs take turns.
lock_cluster() {
  mkdir -p "$CLUSTER_DIR"
  exec 9>"$CLUSTER_DIR/.lock"
  flock 9
}

kubectl_() { "$CLUSTER_BIN/kubectl" --kubeconfig="$KUBECONFIG_FILE" "$@"; }
# ctr_ ARGS: ctr on the real node's containerd, in the namespace of the
# kubelet's containers.
ctr_() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

is_node_component() { [[ "$1" == containerd || "$1" == kubelet ]]; }

# need_root WHAT: dies unless this runs as root.
need_root() {
  ((EUID == 0)) || die "$1 needs root (mounts, network namespaces, cgroups); run as root, or set SPECDEC_CLUSTER_REAL_NODE=0 to leave the real node out"
}

# hashed_file NAME EXT TEXT: writes TEXT to $NODE_DIR/NAME-<hash of TEXT>.EXT
# (once; other versions are removed) and prints its path. A component whose
# configuration file has such a name has a command line that changes with the
# configuration, so `up` restarts it when the configuration changes.
hashed_file() {
  local name="$1" ext="$2" text="$3" hash path
  hash="$(printf '%s' "$text" | sha256sum | cut -c1-12)"
  path="$NODE_DIR/$name-$hash.$ext"
  if [[ ! -f "$path" ]]; then
    mkdir -p "$NODE_DIR"
    printf '%s' "$text" >"$path.tmp"
    mv -f "$path.tmp" "$path"
  fi
  find "$NODE_DIR" -maxdepth 1 -name "$name-*.$ext" ! -path "$path" -delete
  echo "$path"
}

# component_cmd NAME: sets the array CMD to NAME's command line.
component_cmd() {
  case "$1" in
    etcd)
      CMD=("$CLUSTER_BIN/etcd"
        --name=specdec
        --data-dir="$CLUSTER_DIR/etcd"
        --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT"
        --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT"
        --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT"
        --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT"
        --initial-cluster="specdec=http://127.0.0.1:$ETCD_PEER_PORT"
        --unsafe-no-fsync=true)
      ;;
    kube-apiserver)
      # The "kubernetes" Service gets no endpoints (--endpoint-reconciler-type=none):
      # Endpoints may not hold a loopback address, and nothing in this cluster
      # reaches the API server through the Service. --shutdown-send-retry-after
      # makes SIGTERM end it in seconds rather than after waiting up to 60 s
      # for open watches. The requestheader flags only fill in the
      # extension-apiserver-authentication ConfigMap that the controller
      # manager and scheduler read (no certificate has the allowed name).
      # OwnerReferencesPermissionEnforcement is on, as many production
      # clusters have it: setting blockOwnerDeletion on an owner reference
      # then needs `update` on the owner's finalizers, which RBAC tests must
      # see. It reaches the real node's kubelet (logs, exec) at the node's
      # InternalIP (its Hostname resolves nowhere), with a client certificate
      # the kubelet accepts, checking the kubelet's own against the CA.
      CMD=("$CLUSTER_BIN/kube-apiserver"
        --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT"
        --bind-address=127.0.0.1
        --advertise-address=127.0.0.1
        --secure-port="$APISERVER_PORT"
        --tls-cert-file="$PKI/apiserver.crt"
        --tls-private-key-file="$PKI/apiserver.key"
        --client-ca-file="$PKI/ca.crt"
        --requestheader-client-ca-file="$PKI/ca.crt"
        --requestheader-allowed-names=front-proxy-client
        --requestheader-username-headers=X-Remote-User
        --requestheader-group-headers=X-Remote-Group
        --requestheader-extra-headers-prefix=X-Remote-Extra-
        --authorization-mode=Node,RBAC
        --enable-admission-plugins=OwnerReferencesPermissionEnforcement
        --service-account-issuer=https://kubernetes.default.svc.cluster.local
        --service-account-key-file="$PKI/sa.pub"
        --service-account-signing-key-file="$PKI/sa.key"
        --service-cluster-ip-range="$SERVICE_CIDR"
        --endpoint-reconciler-type=none
        --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt"
        --kubelet-client-key="$PKI/apiserver-kubelet-client.key"
        --kubelet-certificate-authority="$PKI/ca.crt"
        --kubelet-preferred-address-types=InternalIP
        --allow-privileged=true
        --shutdown-send-retry-after=true
        --profiling=false)
      ;;
    kube-controller-manager)
      CMD=("$CLUSTER_BIN/kube-controller-manager"
        --kubeconfig="$KUBECONFIG_FILE"
        --authentication-kubeconfig="$KUBECONFIG_FILE"
        --authorization-kubeconfig="$KUBECONFIG_FILE"
        --bind-address=127.0.0.1
        --secure-port="$KCM_PORT"
        --cert-dir="$CLUSTER_DIR/kube-controller-manager"
        --leader-elect=false
        '--controllers=*'
        --use-service-account-credentials=false
        --service-account-private-key-file="$PKI/sa.key"
        --root-ca-file="$PKI/ca.crt"
        --cluster-signing-cert-file="$PKI/ca.crt"
        --cluster-signing-key-file="$PKI/ca.key"
        --service-cluster-ip-range="$SERVICE_CIDR"
        --profiling=false)
      ;;
    kube-scheduler)
      CMD=("$CLUSTER_BIN/kube-scheduler"
        --kubeconfig="$KUBECONFIG_FILE"
        --authentication-kubeconfig="$KUBECONFIG_FILE"
        --authorization-kubeconfig="$KUBECONFIG_FILE"
        --bind-address=127.0.0.1
        --secure-port="$SCHEDULER_PORT"
        --cert-dir="$CLUSTER_DIR/kube-scheduler"
        --leader-elect=false
        --profiling=false)
      ;;
    kwok)
      # Fake kubelets for every node annotated kwok.x-k8s.io/node=fake, with
      # kwok's default node and pod stages (kwok-stages.yaml): nodes turn
      # Ready and keep their leases, pods turn Running and Ready with an IP
      # from $POD_CIDR, deleted pods go away.
      CMD=("$CLUSTER_BIN/kwok"
        --kubeconfig="$KUBECONFIG_FILE"
        --config="$CLUSTER_HERE/kwok-stages.yaml"
        --manage-all-nodes=false
        --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake
        --cidr="$POD_CIDR"
        --node-ip=127.0.0.1
        --node-lease-duration-seconds=40
        --server-address="127.0.0.1:$KWOK_PORT")
      ;;
    containerd)
      CMD=("$CONTAINERD_BIN" --config="$(hashed_file containerd toml "$(containerd_config)")")
      ;;
    kubelet)
      # Labels are a flag only (no configuration field); the node's name is
      # its own, not the host's.
      CMD=("$CLUSTER_BIN/kubelet"
        --config="$(hashed_file kubelet yaml "$(kubelet_config)")"
        --kubeconfig="$NODE_DIR/kubeconfig"
        --root-dir="$KUBELET_ROOT"
        --hostname-override="$NODE_NAME"
        --node-ip="$NODE_IP"
        --node-labels="$NODE_LABEL_KEY=$NODE_LABEL_VALUE")
      ;;
    *) die "unknown component $1" ;;
  esac
}

# The real node's containerd: all of its own (root, state, socket, runc's
# state), so that it never meets a system containerd's containers or images.
#   restrict_oom_score_adj: no container's oom_score_adj below containerd's
#     own; where root lacks CAP_SYS_RESOURCE (some VMs and containers),
#     lowering it fails and runc with it ("can't get final child's PID from
#     pipe").
#   netns_mounts_under_state_dir: the pods' network namespaces under
#     $NODE_RUN, where `down --purge` finds them.
#   stream_server_address: exec, attach and port-forward on loopback only.
#   SystemdCgroup = false: cgroupfs, as the kubelet's cgroupDriver (systemd
#     need not be the init).
containerd_config() {
  cat <<TOML
version = 2
root = "$NODE_DIR/containerd"
state = "$NODE_RUN/containerd"

[grpc]
  address = "$CONTAINERD_SOCK"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "$NODE_RUN/runc"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "$CNI_BIN_DIR"
  conf_dir = "$NODE_DIR/cni"

[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE_DIR/containerd/opt"
TOML
}

# The kubelet's configuration; README.md gives the reason for each setting.
kubelet_config() {
  cat <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
podLogsDir: $NODE_DIR/pod-logs
volumePluginDir: $NODE_DIR/volume-plugins
resolvConf: /etc/resolv.conf
registerWithTaints:
- {key: $NODE_TAINT_KEY, value: "$NODE_TAINT_VALUE", effect: $NODE_TAINT_EFFECT}
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
  imagefs.inodesFree: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
shutdownGracePeriod: 0s
YAML
}

# component_healthy NAME: 0 when NAME answers its health check.
component_healthy() {
  case "$1" in
    etcd) curl -fsS -m 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health" 2>/dev/null | grep -q '"health":"true"' ;;
    kube-apiserver) [[ "$(kubectl_ get --raw /readyz --request-timeout=3s 2>/dev/null)" == ok ]] ;;
    kube-controller-manager) [[ "$(curl -ksS -m 2 "https://127.0.0.1:$KCM_PORT/healthz" 2>/dev/null)" == ok ]] ;;
    kube-scheduler) [[ "$(curl -ksS -m 2 "https://127.0.0.1:$SCHEDULER_PORT/healthz" 2>/dev/null)" == ok ]] ;;
    kwok) [[ "$(curl -sS -m 2 "http://127.0.0.1:$KWOK_PORT/healthz" 2>/dev/null)" == ok ]] ;;
    # Its CRI plugin loaded (a bad CRI setting fails that plugin alone).
    containerd) ctr --address "$CONTAINERD_SOCK" plugins ls 2>/dev/null | awk '$2 == "cri" && $NF == "ok" {ok = 1} END {exit !ok}' ;;
    kubelet) [[ "$(curl -sS -m 2 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz" 2>/dev/null)" == ok ]] ;;
  esac
}

# component_exe NAME: the binary NAME runs (containerd is the system's).
component_exe() {
  case "$1" in
    containerd) realpath -m "$CONTAINERD_BIN" ;;
    *) echo "$CLUSTER_BIN/$1" ;;
  esac
}

# pid_is PID NAME: 0 when PID is a live (not zombie) process of NAME's binary.
pid_is() {
  local exe
  exe="$(readlink "/proc/$1/exe" 2>/dev/null)" || return 1
  [[ "${exe% (deleted)}" == "$(component_exe "$2")" ]]
}

# pid_alive PID: 0 while PID lives (a zombie has no exe). Right after
# `setsid CMD &` the child may still be the shell or setsid itself, not yet
# CMD's binary, so a process just started is judged by this, not pid_is.
pid_alive() {
  readlink "/proc/$1/exe" >/dev/null 2>&1
}

# component_pid NAME: prints NAME's pid and returns 0 when it is running.
component_pid() {
  local pid
  pid="$(cat "$PIDS/$1.pid" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && pid_is "$pid" "$1" || return 1
  echo "$pid"
}

# same_cmd PID: 0 when PID's command line is exactly CMD.
same_cmd() {
  local want
  want="$(printf '%s\0' "${CMD[@]}" | base64 -w0)"
  [[ "$(base64 -w0 <"/proc/$1/cmdline" 2>/dev/null)" == "$want" ]]
}

# start_component NAME: starts NAME in a session of its own (it outlives the
# script), unless it already runs with the current command line, and waits
# until it is healthy. One running with another command line (started by an
# older lib.sh, or from another checkout) is stopped and started afresh, so
# that a kept state directory never leaves a stale flag set in force.
start_component() {
  local name="$1" pid
  mkdir -p "$LOGS" "$PIDS"
  component_cmd "$name"
  if pid="$(component_pid "$name")" && ! same_cmd "$pid"; then
    log "$name (pid $pid) runs with another command line; restarting it"
    stop_component "$name"
  fi
  if pid="$(component_pid "$name")"; then
    log "$name already running (pid $pid)"
  else
    echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) starting: ${CMD[*]}" >>"$LOGS/$name.log"
    setsid "${CMD[@]}" </dev/null >>"$LOGS/$name.log" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$PIDS/$name.pid"
    log "started $name (pid $pid, log $LOGS/$name.log)"
  fi
  wait_healthy "$name" "$pid"
}

# wait_healthy NAME PID [TIMEOUT_S]
wait_healthy() {
  local name="$1" pid="$2" timeout="${3:-120}" start=$SECONDS
  until component_healthy "$name"; do
    if ! pid_alive "$pid"; then
      tail -n 30 "$LOGS/$name.log" >&2 || true
      die "$name exited; see $LOGS/$name.log"
    fi
    if ((SECONDS - start > timeout)); then
      tail -n 30 "$LOGS/$name.log" >&2 || true
      die "$name not healthy after ${timeout}s; see $LOGS/$name.log"
    fi
    sleep 0.5
  done
}

# stop_component NAME: SIGTERM, then SIGKILL after 10 s.
stop_component() {
  local name="$1" pid i
  if pid="$(component_pid "$name")"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      pid_is "$pid" "$name" || break
      sleep 0.1
    done
    if pid_is "$pid" "$name"; then
      log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      while pid_is "$pid" "$name"; do sleep 0.1; done
    fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$PIDS/$name.pid"
}
