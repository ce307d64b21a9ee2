# Shared by make-base.sh and run.sh (sourced, not run). Root only: rootless podman needs subuids and a user
# session this kind of machine (a Firecracker VM, hybrid cgroups v1 + v2, no systemd) does not have.
#
# What this machine needs, and why (see docs/container.md):
#   --runtime runc             crun (podman's default when installed) refuses hybrid cgroup hierarchies here
#   --cgroup-manager cgroupfs  no systemd as PID 1, so no systemd cgroup manager
#   --events-backend file      no journald
#   --ulimit nofile/nproc      podman's defaults exceed this machine's hard limits (20000 open files)
#   build --network host       the build's apt-get and pip reach the mirrors without a CNI bridge
#   run --network none         (run.sh) the demo's ports stay inside the container, whatever runs on the host
# The runtime and storage driver can be overridden: QASUP_CT_RUNTIME, QASUP_CT_STORAGE (e.g. vfs).

QASUP_CT_RUNTIME=${QASUP_CT_RUNTIME:-runc}
QASUP_CT_STORAGE=${QASUP_CT_STORAGE:-}
QASUP_BASE_IMAGE=${QASUP_BASE_IMAGE:-localhost/qasup-base:bookworm}
QASUP_CT_IMAGE=${QASUP_CT_IMAGE:-localhost/qasup-smoke:latest}

say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { say "FAIL: $*" >&2; exit 1; }

# Installs what the scripts need from Debian's packages when it is missing (apt-get, no other registry).
ensure_tools() {
    local missing=()
    local tool pkg
    for tool in "$@"; do
        case "$tool" in
            podman) pkg=podman ;; runc) pkg=runc ;; debootstrap) pkg=debootstrap ;;
            docker-compose) pkg=docker-compose ;; *) pkg=$tool ;;
        esac
        command -v "$tool" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root"
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
    say "installing ${missing[*]} (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" uidmap \
        containernetworking-plugins >/dev/null
}

# podman with this machine's settings (global options; the per-container ones are in run.sh).
pm() {
    local opts=(--runtime "$QASUP_CT_RUNTIME" --cgroup-manager cgroupfs --events-backend file)
    [ -n "$QASUP_CT_STORAGE" ] && opts+=(--storage-driver "$QASUP_CT_STORAGE")
    podman "${opts[@]}" "$@"
}
