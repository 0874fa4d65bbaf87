# The real node's host side, for up and down (source lib.sh first): its
# network, files and pause image before containerd and the kubelet start, and
# the cleanup after they stop. The two components' command lines are in
# lib.sh. Everything here needs root. Runs nothing by itself.

# The host settings the kubelet changes when it starts (it sets these sysctls
# to the values Kubernetes nodes run with, and adds iptables chains): recorded
# before its first start, put back by down.
KUBELET_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
HOST_SETTINGS="$NODE_RUN/host-settings"
# The network interfaces this cluster's node made, one a line: purge_node
# deletes these alone, and another cluster's `up` refuses to take them over.
NODE_IFACES_FILE="$NODE_RUN/interfaces"
# The CNI network's name (libcni keeps a cache of results under it).
CNI_NETWORK=specdec-real-node

# cidr_address CIDR OFFSET: the address OFFSET above CIDR's base (IPv4).
cidr_address() {
  local a b c d n
  IFS=. read -r a b c d <<<"${1%/*}"
  n=$(((a << 24 | b << 16 | c << 8 | d) + $2))
  echo "$((n >> 24 & 255)).$((n >> 16 & 255)).$((n >> 8 & 255)).$((n & 255))"
}
NODE_POD_GATEWAY="$(cidr_address "$NODE_POD_CIDR" 1)"

# node_preflight: dies naming what the node needs and this host lacks.
node_preflight() {
  need_root "the real node"
  local tool
  [[ -x "$CONTAINERD_BIN" ]] || die "no containerd at $CONTAINERD_BIN (set SPECDEC_CLUSTER_CONTAINERD)"
  for tool in containerd-shim-runc-v2 runc ctr ip mount umount iptables; do
    command -v "$tool" >/dev/null 2>&1 || die "the real node needs $tool on PATH"
  done
  for tool in bridge host-local loopback; do
    [[ -x "$CNI_BIN_DIR/$tool" ]] || die "no CNI plugin $CNI_BIN_DIR/$tool (set SPECDEC_CLUSTER_CNI_BIN)"
  done
  [[ -x "$CLUSTER_BIN/pause" ]] || die "no $CLUSTER_BIN/pause (tests/cluster/build makes it)"
}

# ensure_iface NAME CIDR: a bridge device NAME holding exactly the address
# CIDR, up. A bridge without ports serves as the node address's interface too
# (a dummy device would do, but not every kernel has that driver).
ensure_iface() {
  local name="$1" cidr="$2" other
  other="$(ip -4 -o addr show to "${cidr%/*}/32" | awk -v n="$name" '$2 != n {print $2}')"
  [[ -z "$other" ]] || die "${cidr%/*} is already an address of $other; choose another (see lib.sh)"
  other="$(grep -lxF -- "$name" /run/specdec-cluster-*/interfaces 2>/dev/null | grep -vxF "$NODE_IFACES_FILE" || true)"
  [[ -z "$other" ]] || die "interface $name is the real node's of another cluster ($other); give this one its own interfaces, addresses and kubelet ports (see lib.sh)"
  grep -qxF -- "$name" "$NODE_IFACES_FILE" 2>/dev/null || echo "$name" >>"$NODE_IFACES_FILE"
  if ! ip link show dev "$name" >/dev/null 2>&1; then
    ip link add name "$name" type bridge
  fi
  if [[ "$(ip -4 -o addr show dev "$name" | awk '{print $4}')" != "$cidr" ]]; then
    ip -4 addr flush dev "$name"
    ip addr add "$cidr" dev "$name"
  fi
  ip link set dev "$name" up
}

# node_network: the node's address and the pods' bridge (CNI's bridge plugin
# attaches the pods to it but is not its gateway: that would have it turn on
# IP forwarding for the whole host, which nothing here needs).
node_network() {
  local route
  route="$(ip -4 route show exact "$NODE_POD_CIDR" | grep -v "dev $NODE_BRIDGE " || true)"
  [[ -z "$route" ]] || die "$NODE_POD_CIDR is already routed ($route); choose another (see lib.sh)"
  ensure_iface "$NODE_IFACE" "$NODE_IP/32"
  ensure_iface "$NODE_BRIDGE" "$NODE_POD_GATEWAY/${NODE_POD_CIDR#*/}"
}

# write_if_changed PATH TEXT: replaces PATH atomically when TEXT differs.
write_if_changed() {
  [[ -f "$1" && "$(cat "$1")" == "$2" ]] && return 0
  printf '%s\n' "$2" >"$1.tmp"
  mv -f "$1.tmp" "$1"
}

# node_files: directories, the CNI network and the kubelet's kubeconfig (a
# node credential: the Node authorizer gives it what a kubelet needs).
node_files() {
  mkdir -p "$NODE_DIR/cni" "$NODE_DIR/pod-logs" "$NODE_DIR/volume-plugins" "$KUBELET_ROOT" "$NODE_RUN"
  # Pods get a default route through the bridge's address, so that they
  # reach this host at $NODE_IP; IPs handed out are kept under $NODE_RUN.
  write_if_changed "$NODE_DIR/cni/10-specdec.conflist" "{
  \"cniVersion\": \"1.0.0\",
  \"name\": \"$CNI_NETWORK\",
  \"plugins\": [{
    \"type\": \"bridge\",
    \"bridge\": \"$NODE_BRIDGE\",
    \"isGateway\": false,
    \"ipMasq\": false,
    \"hairpinMode\": true,
    \"ipam\": {
      \"type\": \"host-local\",
      \"dataDir\": \"$NODE_RUN/cni-ipam\",
      \"ranges\": [[{\"subnet\": \"$NODE_POD_CIDR\", \"gateway\": \"$NODE_POD_GATEWAY\"}]],
      \"routes\": [{\"dst\": \"0.0.0.0/0\", \"gw\": \"$NODE_POD_GATEWAY\"}]
    }
  }]
}"
  local b64ca b64crt b64key
  b64ca="$(base64 -w0 <"$PKI/ca.crt")"
  b64crt="$(base64 -w0 <"$PKI/node.crt")"
  b64key="$(base64 -w0 <"$PKI/node.key")"
  write_if_changed "$NODE_DIR/kubeconfig" "apiVersion: v1
kind: Config
clusters:
- name: specdec-test
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $b64ca
users:
- name: $NODE_NAME
  user:
    client-certificate-data: $b64crt
    client-key-data: $b64key
contexts:
- name: specdec-test
  context: {cluster: specdec-test, user: $NODE_NAME}
current-context: specdec-test"
  chmod 600 "$NODE_DIR/kubeconfig"
}

# node_prepare: everything before containerd starts.
node_prepare() {
  node_preflight
  mkdir -p "$NODE_RUN"
  node_network
  node_files
}

# image_arch: this host's architecture as OCI names it.
image_arch() {
  case "$(uname -m)" in
    x86_64) echo amd64 ;;
    aarch64) echo arm64 ;;
    *) uname -m ;;
  esac
}

# make_pause_archive DIR: writes DIR/pause.tar, an OCI image archive holding
# the pause binary alone, reproducibly (same binary, same digests), and
# prints its manifest's digest.
make_pause_archive() {
  local dir="$1" layer config manifest arch
  arch="$(image_arch)"
  mkdir -p "$dir/rootfs" "$dir/oci/blobs/sha256"
  install -m 0755 "$CLUSTER_BIN/pause" "$dir/rootfs/pause"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$dir/rootfs" -cf "$dir/layer.tar" pause
  layer="$(sha256sum <"$dir/layer.tar" | cut -d' ' -f1)"
  mv "$dir/layer.tar" "$dir/oci/blobs/sha256/$layer"
  # blob TEXT: stores TEXT as a blob and prints "DIGEST SIZE".
  blob() {
    local d
    d="$(printf '%s' "$1" | sha256sum | cut -d' ' -f1)"
    printf '%s' "$1" >"$dir/oci/blobs/sha256/$d"
    echo "$d ${#1}"
  }
  config="$(blob "{\"architecture\":\"$arch\",\"os\":\"linux\",\"config\":{\"User\":\"65535:65535\",\"Entrypoint\":[\"/pause\"]},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$layer\"]}}")"
  manifest="$(blob "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:${config% *}\",\"size\":${config#* }},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$layer\",\"size\":$(stat -c %s "$dir/oci/blobs/sha256/$layer")}]}")"
  printf '%s' "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:${manifest% *}\",\"size\":${manifest#* },\"platform\":{\"architecture\":\"$arch\",\"os\":\"linux\"},\"annotations\":{\"io.containerd.image.name\":\"$PAUSE_IMAGE\",\"org.opencontainers.image.ref.name\":\"$PAUSE_VERSION\"}}]}" >"$dir/oci/index.json"
  printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci/oci-layout"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$dir/oci" -cf "$dir/pause.tar" .
  echo "sha256:${manifest% *}"
}

# image_digest REF: the manifest digest containerd holds under REF (none: empty).
image_digest() {
  ctr_ images ls "name==$1" 2>/dev/null | awk -v ref="$1" '$1 == ref {print $3}'
}

# import_pause_image: the sandbox image into the node's containerd (no
# registry serves it here), pinned so that image garbage collection keeps it.
import_pause_image() {
  local work digest
  work="$(mktemp -d "$NODE_DIR/.pause.XXXXXX")"
  digest="$(make_pause_archive "$work")"
  if [[ "$(image_digest "$PAUSE_IMAGE")" != "$digest" ]]; then
    ctr_ images import "$work/pause.tar" >/dev/null
    [[ "$(image_digest "$PAUSE_IMAGE")" == "$digest" ]] || die "importing $PAUSE_IMAGE into containerd failed"
    log "imported $PAUSE_IMAGE ($digest)"
  fi
  ctr_ images label "$PAUSE_IMAGE" io.cri-containerd.pinned=pinned >/dev/null
  rm -rf "$work"
}

# save_host_settings: records what the kubelet is about to change, unless a
# record is there already (it would hold the kubelet's values otherwise).
save_host_settings() {
  [[ -f "$HOST_SETTINGS" ]] && return 0
  component_pid kubelet >/dev/null && return 0
  local key
  {
    for key in "${KUBELET_SYSCTLS[@]}"; do
      echo "sysctl $key $(sysctl -n "$key")"
    done
    # The kubelet's iptables chains are ours to remove only when it added them.
    iptables -t mangle -S KUBE-IPTABLES-HINT >/dev/null 2>&1 || echo "iptables ours"
  } >"$HOST_SETTINGS.tmp"
  mv -f "$HOST_SETTINGS.tmp" "$HOST_SETTINGS"
}

# restore_host_settings: puts back what save_host_settings recorded.
restore_host_settings() {
  [[ -f "$HOST_SETTINGS" ]] || return 0
  local kind key value ipt table
  while read -r kind key value; do
    case "$kind" in
      sysctl) sysctl -qw "$key=$value" || log "could not put back $key=$value" ;;
      iptables)
        for ipt in iptables ip6tables; do
          command -v "$ipt" >/dev/null 2>&1 || continue
          while "$ipt" -t filter -D INPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
          while "$ipt" -t filter -D OUTPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
          "$ipt" -t filter -F KUBE-FIREWALL 2>/dev/null || true
          "$ipt" -t filter -X KUBE-FIREWALL 2>/dev/null || true
          for table in mangle nat filter; do
            "$ipt" -t "$table" -X KUBE-KUBELET-CANARY 2>/dev/null || true
          done
          "$ipt" -t mangle -X KUBE-IPTABLES-HINT 2>/dev/null || true
        done
        ;;
    esac
  done <"$HOST_SETTINGS"
  rm -f "$HOST_SETTINGS"
}

# node_present: 0 when this cluster's real node left something on this host.
node_present() {
  [[ -d "$NODE_RUN" || -n "$(mounts_under "$CLUSTER_DIR")" ]]
}

# stop_pod_containers: kills the pods' containers while containerd still
# runs, so that it removes their tasks and their shims exit (shims outlive
# containerd, and a container outlives its shim). The pods' sandboxes stay:
# the next kubelet tears down their network and starts them afresh.
stop_pod_containers() {
  component_pid containerd >/dev/null || return 0
  local ids id
  ids="$(ctr_ tasks ls -q 2>/dev/null)" || return 0
  [[ -n "$ids" ]] || return 0
  log "stopping the real node's containers ($(wc -w <<<"$ids"))"
  for id in $ids; do
    ctr_ tasks kill --all --signal SIGKILL "$id" >/dev/null 2>&1 || true
  done
  for id in $ids; do
    ctr_ tasks delete --force "$id" >/dev/null 2>&1 || true
  done
}

# kill_leftover_containers: after containerd stopped: containers that runc
# still knows (their shim gone with a containerd that died) and the shims of
# this containerd (their command line names its socket), by pid.
kill_leftover_containers() {
  local runc_root="$NODE_RUN/runc/k8s.io" id pid
  if [[ -d "$runc_root" ]]; then
    for id in $(runc --root "$runc_root" list -q 2>/dev/null); do
      log "killing leftover container $id"
      runc --root "$runc_root" delete --force "$id" >/dev/null 2>&1 || true
    done
  fi
  for pid in $(shim_pids); do
    log "killing leftover containerd shim (pid $pid)"
    kill -KILL "$pid" 2>/dev/null || true
  done
}

# shim_pids: the pids of the shims of this node's containerd.
shim_pids() {
  local dir exe
  for dir in /proc/[0-9]*; do
    exe="$(readlink "$dir/exe" 2>/dev/null)" || continue
    [[ "${exe##*/}" == containerd-shim* ]] || continue
    tr '\0' '\n' <"$dir/cmdline" 2>/dev/null | grep -qxF -- "$CONTAINERD_SOCK" && echo "${dir#/proc/}"
  done
  return 0
}

# kubelet_pids: the pids of every kubelet on this host.
kubelet_pids() {
  local dir exe
  for dir in /proc/[0-9]*; do
    exe="$(readlink "$dir/exe" 2>/dev/null)" || continue
    [[ "${exe##*/}" == kubelet ]] && echo "${dir#/proc/}"
  done
  return 0
}

# mounts_under PREFIX...: mount points at or below the prefixes, in mount order.
mounts_under() {
  local mp prefix
  while read -r _ _ _ _ mp _; do
    mp="$(printf '%b' "$mp")"
    for prefix; do
      if [[ "$mp" == "$prefix" || "$mp" == "$prefix"/* ]]; then
        echo "$mp"
        break
      fi
    done
  done </proc/self/mountinfo
}

# unmount_under PREFIX...: unmounts everything there (pod volumes, container
# root filesystems, network namespaces, the kubelet's own bind mount), last
# mounted first, and dies if something stays.
unmount_under() {
  local round i mps=()
  for ((round = 0; round < 5; round++)); do
    mapfile -t mps < <(mounts_under "$@")
    ((${#mps[@]})) || return 0
    for ((i = ${#mps[@]} - 1; i >= 0; i--)); do
      umount "${mps[i]}" 2>/dev/null || umount -l "${mps[i]}" 2>/dev/null || true
    done
  done
  die "still mounted: ${mps[*]}"
}

# purge_node: removes the real node from this host: its mounts, network
# namespaces, interfaces, runtime state, and what the kubelet and libcni left
# in system directories about its containers.
purge_node() {
  local link sandbox
  unmount_under "$NODE_RUN" "$CLUSTER_DIR"
  # libcni's cache of results, one file per sandbox and network.
  for sandbox in "$NODE_DIR"/containerd/io.containerd.grpc.v1.cri/sandboxes/*; do
    [[ -e "$sandbox" ]] && rm -f /var/lib/cni/results/*-"${sandbox##*/}"-*
  done
  if [[ -f "$NODE_IFACES_FILE" ]]; then
    while read -r link; do
      if ip link show dev "$link" >/dev/null 2>&1; then
        ip link delete dev "$link"
      fi
    done <"$NODE_IFACES_FILE"
  fi
  rm -rf "$NODE_RUN"
  if [[ -d /var/log/containers ]]; then
    find /var/log/containers -maxdepth 1 -type l -lname "$NODE_DIR/pod-logs/*" -delete
  fi
  # The device plugin socket's place is fixed, whatever the root directory;
  # it is ours unless another kubelet runs on this host.
  if [[ -z "$(kubelet_pids)" ]]; then
    rm -f /var/lib/kubelet/device-plugins/kubelet.sock
    rmdir --ignore-fail-on-non-empty /var/lib/kubelet/device-plugins /var/lib/kubelet /var/log/containers 2>/dev/null || true
  fi
  # The parent of the containers' cgroups (each container's went with it),
  # when empty.
  rmdir /sys/fs/cgroup/k8s.io /sys/fs/cgroup/*/k8s.io 2>/dev/null || true
  log "removed the real node's interfaces, mounts and runtime state"
}
