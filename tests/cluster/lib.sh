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

PKI="$CLUSTER_DIR/pki"
LOGS="$CLUSTER_DIR/logs"
PIDS="$CLUSTER_DIR/pids"
KUBECONFIG_FILE="$CLUSTER_DIR/kubeconfig"

# Start order; down stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

log() { echo "[cluster] $*" >&2; }
die() { echo "[cluster] error: $*" >&2; exit 1; }

# lock_cluster: holds a lock on the state directory until the script exits,
# so that concurrent up/down/restart-apiserver runs take turns.
lock_cluster() {
  mkdir -p "$CLUSTER_DIR"
  exec 9>"$CLUSTER_DIR/.lock"
  flock 9
}

kubectl_() { "$CLUSTER_BIN/kubectl" --kubeconfig="$KUBECONFIG_FILE" "$@"; }

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
      # see.
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
    *) die "unknown component $1" ;;
  esac
}

# component_healthy NAME: 0 when NAME answers its health check.
component_healthy() {
  case "$1" in
    etcd) curl -fsS -m 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health" 2>/dev/null | grep -q '"health":"true"' ;;
    kube-apiserver) [[ "$(kubectl_ get --raw /readyz --request-timeout=3s 2>/dev/null)" == ok ]] ;;
    kube-controller-manager) [[ "$(curl -ksS -m 2 "https://127.0.0.1:$KCM_PORT/healthz" 2>/dev/null)" == ok ]] ;;
    kube-scheduler) [[ "$(curl -ksS -m 2 "https://127.0.0.1:$SCHEDULER_PORT/healthz" 2>/dev/null)" == ok ]] ;;
    kwok) [[ "$(curl -sS -m 2 "http://127.0.0.1:$KWOK_PORT/healthz" 2>/dev/null)" == ok ]] ;;
  esac
}

# pid_is PID NAME: 0 when PID is a live (not zombie) process of NAME's binary.
pid_is() {
  local exe
  exe="$(readlink "/proc/$1/exe" 2>/dev/null)" || return 1
  [[ "${exe% (deleted)}" == "$CLUSTER_BIN/$2" ]]
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
