#!/usr/bin/env bash
# Make Docker usable here: install Debian's docker.io, docker-compose (1.29) and debootstrap
# when missing, and start dockerd in the background when no daemon answers. Idempotent.
# Prints "started <pid>" when it started the daemon (so CI can stop it afterwards).
set -euo pipefail

log() { printf 'docker-up: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  if ! apt-cache policy "${missing[@]}" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
  exit 0
fi
log "no Docker daemon answers: starting dockerd (log: /var/log/pdmfed-dockerd.log)"
as_root sh -c 'nohup dockerd >/var/log/pdmfed-dockerd.log 2>&1 & echo $! >/run/pdmfed-dockerd.pid'
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo "started $(cat /run/pdmfed-dockerd.pid)"
    exit 0
  fi
  sleep 1
done
log "dockerd did not answer within 60 s; see /var/log/pdmfed-dockerd.log"
exit 1
