#!/usr/bin/env bash
# Build FedAAA's container images with podman: a Debian base image made with mmdebstrap (no registry needed),
# a wheelhouse of every Python dependency, and from it the images (see deploy/README.md):
#   localhost/fedaaa-deps:TAG    third-party dependencies in /opt/fedaaa/venv (torch, flwr, monai, ...)
#   localhost/fedaaa-server:TAG  the coordinator's SuperLink (fedaaa federation superlink)
#   localhost/fedaaa-client:TAG  a hospital's node (fedaaa hospital start)
#
# Usage: scripts/build_images.sh [all|wheelhouse|images]   (default: all)
#   wheelhouse  needs the package registry (PyPI): writes build/wheelhouse (third-party wheels,
#               requirements.txt, app/fedaaa-*.whl). Copy that folder to an air-gapped machine.
#   images      needs no network for the Python part (pip install --no-index from the wheelhouse); only the
#               base image is made from the host's own apt sources, unless BASE_IMAGE names an image that
#               is already in podman's store (e.g. one loaded with `podman load`).
#
# Idempotent: a step whose result is present and up to date is skipped (FORCE=1 redoes every step). Run as
# root on a fresh Debian 12 machine (CI), it installs podman, runc, catatonit and mmdebstrap and writes
# /etc/containers/containers.conf when that is absent or different.
#
# Settings (environment):
#   FORCE=1             redo every step
#   VARIANT=cpu         cpu (default) or a name for another torch build, e.g. cu128: its wheelhouse is
#                       build/wheelhouse-cu128 and its tags end in -cu128
#   TORCH_SPEC          the torch requirement (default torch==2.13.0; the host's pip must resolve the build
#                       you want: for VARIANT=cpu the +cpu wheel)
#   TORCH_INDEX_URL     an extra index for torch, e.g. https://download.pytorch.org/whl/cu128
#   BASE_IMAGE          base image (default localhost/fedaaa-base:bookworm, made here with mmdebstrap); any
#                       Debian 12 image with python3 (3.11), python3-venv and useradd will do
#   PYTHON              the host Python 3.11 whose pip builds the wheelhouse (default .venv/bin/python)
#   TAG                 image tag (default: the project's version, plus -VARIANT for a non-cpu variant)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

WHAT=${1:-all}
case "$WHAT" in
  all | wheelhouse | images) ;;
  *)
    echo "usage: $0 [all|wheelhouse|images]" >&2
    exit 2
    ;;
esac

FORCE=${FORCE:-0}
VARIANT=${VARIANT:-cpu}
SUFFIX=""
if [ "$VARIANT" != cpu ]; then SUFFIX="-$VARIANT"; fi
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)
TAG=${TAG:-$VERSION$SUFFIX}
WHEELHOUSE=${WHEELHOUSE:-$ROOT/build/wheelhouse$SUFFIX}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
BASE_IMAGE=${BASE_IMAGE:-localhost/fedaaa-base:bookworm}
DEPS_IMAGE=localhost/fedaaa-deps:$TAG
SUITE=bookworm
UID_IN_IMAGE=10001
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

say() { printf '[build_images] %s\n' "$*"; }
die() {
  printf '[build_images] ERROR: %s\n' "$*" >&2
  exit 1
}

# step NAME FUNCTION: run FUNCTION and print how long it took
TOTAL_START=$(date +%s)
step() {
  local name=$1 start
  shift
  start=$(date +%s)
  say "== $name"
  "$@"
  say "== $name: $(($(date +%s) - start)) s"
}

sha() { sha256sum | cut -c1-16; }

# pip, without its warnings about index locations of the host's pip configuration that do not exist
pip_quiet() {
  "$PYTHON" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

# ------------------------------------------------------------------------------------------------ host tools
host_tools() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  [ -x /usr/libexec/podman/catatonit ] || command -v catatonit >/dev/null || missing+=(catatonit)
  # mmdebstrap only to make the base image (not when it is already there, e.g. from `podman load`)
  if [ "$BASE_IMAGE" = localhost/fedaaa-base:bookworm ] && ! command -v mmdebstrap >/dev/null &&
    ! { command -v podman >/dev/null && podman image exists "$BASE_IMAGE"; }; then
    missing+=(mmdebstrap)
  fi
  if [ ${#missing[@]} -eq 0 ]; then
    say "podman, runc, catatonit (and mmdebstrap where needed) present: nothing to install"
    return
  fi
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    die "missing ${missing[*]}: install them (Debian: apt-get install ${missing[*]}) or run as root on Debian"
  fi
  say "installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The rlimits podman asks for must not exceed what this machine allows, and crun refuses the hybrid
# cgroups of some CI machines: runc with cgroupfs works on both. Host network by default: servers bind
# to 127.0.0.1 only, and no bridge in a private address range is needed.
containers_conf() {
  local conf=/etc/containers/containers.conf want
  if [ "$(id -u)" -ne 0 ]; then
    say "not root: leaving $conf alone (rootless podman uses its own settings)"
    return
  fi
  want=$(
    cat <<EOF
# Written by FedAAA's scripts/build_images.sh (see deploy/README.md).
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=4096:4096"]
netns = "host"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF
  )
  if [ -f "$conf" ] && [ "$(cat "$conf")" = "$want" ]; then
    say "$conf is up to date"
    return
  fi
  if [ -f "$conf" ]; then
    cp "$conf" "$conf.bak"
    say "$conf differs from what FedAAA needs: rewriting it (the old one is $conf.bak)"
  else
    say "$conf absent: writing it"
  fi
  mkdir -p /etc/containers
  printf '%s\n' "$want" >"$conf"
}

# ------------------------------------------------------------------------------------------------ wheelhouse
# The third-party wheels depend only on the project's requirements and the torch build; the FedAAA wheel on
# its sources. Each has its own stamp, so a change of code rebuilds one small wheel only.
deps_hash() {
  {
    "$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"])'
    echo "$TORCH_SPEC $TORCH_INDEX_URL $VARIANT"
  } | sha
}

source_hash() {
  find pyproject.toml README.md fedaaa common client server simulations -type f \
    ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum | sha
}

check_python() {
  "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null ||
    die "$PYTHON is not Python 3.11 (the images' Python, Debian 12's): set PYTHON to a Python 3.11"
  "$PYTHON" -m pip --version >/dev/null || die "$PYTHON has no pip (run scripts/install.sh first)"
}

wheelhouse() {
  check_python
  local want have extra=() tmp torch_wheel
  want=$(deps_hash)
  have=$(cat "$WHEELHOUSE/.stamp" 2>/dev/null || true)
  if [ "$FORCE" = 1 ] || [ "$want" != "$have" ]; then
    say "downloading third-party wheels into $WHEELHOUSE ($TORCH_SPEC)"
    rm -rf "$WHEELHOUSE"
    mkdir -p "$WHEELHOUSE"
    if [ -n "$TORCH_INDEX_URL" ]; then extra=(--extra-index-url "$TORCH_INDEX_URL"); fi
    tmp=$(mktemp -d)
    "$PYTHON" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' >"$tmp/requirements.in"
    pip_quiet wheel --quiet --disable-pip-version-check --wheel-dir "$WHEELHOUSE" "${extra[@]}" \
      "$TORCH_SPEC" -r "$tmp/requirements.in"
    rm -rf "$tmp"
    # exactly what was resolved, as pins: the deps image installs this list and nothing else
    find "$WHEELHOUSE" -maxdepth 1 -name '*.whl' -printf '%f\n' | sed -E 's/^([^-]+)-([^-]+)-.*/\1==\2/' |
      sort >"$WHEELHOUSE/requirements.txt"
    torch_wheel=$(cd "$WHEELHOUSE" && ls -- torch-*.whl)
    if [ "$VARIANT" = cpu ] && [[ "$torch_wheel" != *+cpu* ]]; then
      die "pip resolved $torch_wheel, not a CPU build of torch: set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu and TORCH_SPEC='torch==2.13.0+cpu'"
    fi
    echo "$want" >"$WHEELHOUSE/.stamp"
  else
    say "third-party wheels up to date in $WHEELHOUSE ($(wc -l <"$WHEELHOUSE/requirements.txt") wheels)"
  fi

  want=$(source_hash)
  have=$(cat "$WHEELHOUSE/app/.stamp" 2>/dev/null || true)
  if [ "$FORCE" = 1 ] || [ "$want" != "$have" ] || ! ls "$WHEELHOUSE"/app/fedaaa-*.whl >/dev/null 2>&1; then
    say "building the FedAAA wheel from a clean copy of the sources (source hash ${have:-none} -> $want)"
    rm -rf "$WHEELHOUSE/app"
    mkdir -p "$WHEELHOUSE/app"
    tmp=$(mktemp -d)
    cp -r pyproject.toml README.md fedaaa common client server simulations "$tmp/"
    find "$tmp" -name __pycache__ -prune -exec rm -rf {} +
    pip_quiet wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$WHEELHOUSE/app" "$tmp"
    rm -rf "$tmp"
    echo "$want" >"$WHEELHOUSE/app/.stamp"
  else
    say "FedAAA wheel up to date: $(cd "$WHEELHOUSE/app" && ls -- fedaaa-*.whl)"
  fi
  say "wheelhouse: $(du -sh "$WHEELHOUSE" | cut -f1) in $WHEELHOUSE"
}

# ---------------------------------------------------------------------------------------------------- images
label_of() { podman image inspect --format "{{ index .Labels \"$2\" }}" "$1" 2>/dev/null || true; }

base_image() {
  if [ "$FORCE" != 1 ] && podman image exists "$BASE_IMAGE"; then
    say "$BASE_IMAGE present"
    return
  fi
  [ "$BASE_IMAGE" = localhost/fedaaa-base:bookworm ] ||
    die "$BASE_IMAGE is not in podman's store: podman load or pull it first"
  # the host's own apt sources (one-line or deb822 files), never a hard-coded mirror
  local sources=() f cas=() hooks=() tar
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    if [ -s "$f" ]; then sources+=("$f"); fi
  done
  [ ${#sources[@]} -gt 0 ] || die "no apt sources on this host (/etc/apt/sources.list[.d])"
  # the host's extra CA certificates (e.g. a proxy's or the hospital's own CA) are trusted in the image too
  for f in /usr/local/share/ca-certificates/*.crt; do
    if [ -f "$f" ]; then cas+=("$f"); fi
  done
  if [ ${#cas[@]} -gt 0 ]; then
    hooks+=(--customize-hook="copy-in ${cas[*]} /usr/local/share/ca-certificates/")
    # shellcheck disable=SC2016 # $1 is the chroot, expanded by mmdebstrap's hook shell
    hooks+=(--customize-hook='chroot "$1" update-ca-certificates >/dev/null 2>&1')
  fi
  mkdir -p build/base
  tar=build/base/base-$SUITE.tar
  say "mmdebstrap $SUITE from ${sources[*]} (extra CA certificates: ${#cas[@]})"
  mmdebstrap --quiet --variant=apt --include=python3,python3-venv,ca-certificates,passwd \
    "${hooks[@]}" "$SUITE" "$tar" "${sources[@]}"
  podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' "$tar" "$BASE_IMAGE" >/dev/null
  rm -f "$tar"
  rmdir build/base 2>/dev/null || true
  say "$BASE_IMAGE: $(podman image inspect --format '{{.Size}}' "$BASE_IMAGE" | numfmt --to=si)B"
}

# build IMAGE DOCKERFILE CONTEXT HASH [build args...]: skipped when IMAGE exists with the same hash label
build() {
  local image=$1 file=$2 context=$3 hash=$4
  shift 4
  if [ "$FORCE" != 1 ] && [ "$(label_of "$image" org.fedaaa.build-hash)" = "$hash" ]; then
    say "$image up to date"
    return
  fi
  local old
  old=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
  # --network none: the Python part installs from the wheelhouse only (the air-gapped path)
  podman build --quiet --layers=false --pull=never --network none --file "$file" --label "org.fedaaa.build-hash=$hash" \
    --tag "$image" "$@" "$context" >/dev/null
  say "$image: $(podman image inspect --format '{{.Size}}' "$image" | numfmt --to=si)B"
  # the image this one replaces goes, unless a container or another image still uses it
  if [ -n "$old" ]; then podman rmi "$old" >/dev/null 2>&1 || true; fi
}

deps_image() {
  [ -f "$WHEELHOUSE/requirements.txt" ] || die "no wheelhouse in $WHEELHOUSE: run $0 wheelhouse first"
  local hash
  hash=$( (cat "$WHEELHOUSE/.stamp" "$WHEELHOUSE/requirements.txt" deploy/Dockerfile.deps
    podman image inspect --format '{{.Id}}' "$BASE_IMAGE") | sha)
  build "$DEPS_IMAGE" deploy/Dockerfile.deps "$WHEELHOUSE" "$hash" --build-arg "BASE=$BASE_IMAGE" \
    --build-arg "UID=$UID_IN_IMAGE"
}

app_image() {
  local role=$1 hash
  ls "$WHEELHOUSE"/app/fedaaa-*.whl >/dev/null 2>&1 || die "no FedAAA wheel in $WHEELHOUSE/app: run $0 wheelhouse"
  hash=$( (cat "$WHEELHOUSE/app/.stamp" "deploy/Dockerfile.$role"
    podman image inspect --format '{{.Id}}' "$DEPS_IMAGE") | sha)
  build "localhost/fedaaa-$role:$TAG" "deploy/Dockerfile.$role" "$WHEELHOUSE/app" "$hash" \
    --build-arg "DEPS=$DEPS_IMAGE" --build-arg "UID=$UID_IN_IMAGE"
}

if [ "$WHAT" != images ]; then
  step "wheelhouse" wheelhouse
fi
if [ "$WHAT" != wheelhouse ]; then
  step "host tools" host_tools
  step "containers.conf" containers_conf
  step "base image" base_image
  step "deps image" deps_image
  step "server image" app_image server
  step "client image" app_image client
  # earlier builds of these images that nothing uses any more
  podman image prune --force --filter label=org.fedaaa.build-hash >/dev/null
  podman image ls --filter reference='localhost/fedaaa-*'
fi
say "done in $(($(date +%s) - TOTAL_START)) s"
