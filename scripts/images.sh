#!/usr/bin/env bash
# `make images`: build the stack's images, pulling nothing when no registry answers.
#
# - Base: $PDMFED_BASE_IMAGE if set; else python:3.11-slim when a registry gives it to us; else
#   a local Debian bookworm base (deploy/docker/local/bootstrap-base.sh, debootstrap + import).
# - With the local base the build is air-gapped: pip on this host fills deploy/docker/wheels/
#   with every wheel the project needs and the Dockerfile installs from there with --no-index.
#   RabbitMQ, Redis and Prometheus then get local images from Debian packages too, used through
#   the compose override deploy/compose/local-images.yml.
# - Every image is tagged with a hash of what it is built from; an image whose tag exists is
#   not rebuilt. The tags are written to build/images.env for `make stack` / `make test-stack`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export DOCKER_BUILDKIT=0 # the legacy builder pulls nothing it is not asked to
DOCKER=${DOCKER:-docker}
HOST_PYTHON=${PYTHON:-python3}
UPSTREAM_BASE=python:3.11-slim
LOCAL_DIR=deploy/docker/local
WHEELS=deploy/docker/wheels
OUT=build/images.env
UPSTREAM_SERVICES="rabbitmq:3.13.7-management redis:7.2.5-alpine prom/prometheus:v2.53.2"

log() { printf 'images: %s\n' "$*" >&2; }
die() { printf 'images: %s\n' "$*" >&2; exit 1; }

exists() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
image_id() { "$DOCKER" image inspect --format '{{.Id}}' "$1"; }

# sha256 over the named files' paths and contents (tracked or new, never ignored files).
content_hash() {
  git ls-files -z --cached --others --exclude-standard -- "$@" | sort -z |
    while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0%s\n' "$f" "$(sha256sum <"$f")"; done |
    sha256sum | cut -c1-16
}

try_pull() { timeout 300 "$DOCKER" pull -q "$1" >/dev/null 2>&1; }

"$DOCKER" info >/dev/null 2>&1 || die "docker is not reachable (start dockerd, or run .ci/run)"

# --- base -------------------------------------------------------------------------------
local_base=0
if [ -n "${PDMFED_BASE_IMAGE:-}" ]; then
  base=$PDMFED_BASE_IMAGE
  exists "$base" || try_pull "$base" || die "base image $base is not present and cannot be pulled"
elif exists "$UPSTREAM_BASE" || try_pull "$UPSTREAM_BASE"; then
  base=$UPSTREAM_BASE
else
  local_base=1
  base="pdm-federation-base:bookworm-$(content_hash "$LOCAL_DIR/bootstrap-base.sh")"
  if exists "$base"; then
    log "local base $base present"
  else
    log "no registry answers: building $base with debootstrap (a few minutes, once)"
    command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
    "$LOCAL_DIR/bootstrap-base.sh" "$base" >/dev/null
  fi
fi
base_id=$(image_id "$base")

# --- application images -----------------------------------------------------------------
app_inputs=(pyproject.toml README.md shared services deploy/docker/Dockerfile .dockerignore)
tag="$(printf '%s %s %s\n' "$base_id" "$local_base" "$(content_hash "${app_inputs[@]}")" | sha256sum | cut -c1-16)"

fill_wheelhouse() {
  # Wheels for the image's Python (3.11) and platform, built by pip on this host.
  local want have
  "$HOST_PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
    die "$HOST_PYTHON is not Python 3.11: it cannot build the image's wheelhouse"
  want=$(content_hash pyproject.toml)
  have=$(cat "$WHEELS/.inputs" 2>/dev/null || true)
  if [ "$want" = "$have" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    log "wheelhouse up to date"
    return
  fi
  log "filling the wheelhouse $WHEELS with pip on the host"
  rm -f "$WHEELS"/*.whl "$WHEELS/.inputs"
  # The project's dependencies, its build backend, and async-timeout: redis needs it on
  # Debian's Python 3.11.2 (< 3.11.3), which this host's newer Python does not ask for.
  "$HOST_PYTHON" - >"$WHEELS/requirements.txt" <<'PY'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))
print("\n".join(project["project"]["dependencies"] + project["build-system"]["requires"] + ["async-timeout"]))
PY
  "$HOST_PYTHON" -m pip wheel --quiet --prefer-binary --wheel-dir "$WHEELS" -r "$WHEELS/requirements.txt" \
    2> >(grep -v "is neither a file nor a directory" >&2)
  rm -f "$WHEELS/requirements.txt"
  echo "$want" >"$WHEELS/.inputs"
}

build_app() { # target repo
  local target=$1 repo=$2
  if exists "$repo:$tag"; then
    log "$repo:$tag present"
  else
    log "building $repo:$tag (target $target, base $base)"
    "$DOCKER" build --quiet --build-arg "BASE_IMAGE=$base" --target "$target" \
      -f deploy/docker/Dockerfile -t "$repo:$tag" . >/dev/null
  fi
  "$DOCKER" tag "$repo:$tag" "$repo:${PDMFED_IMAGE_TAG:-dev}"
}

if ! exists "pdm-federation:$tag" || ! exists "pdm-federation-datasite:$tag"; then
  if [ "$local_base" = 1 ]; then fill_wheelhouse; fi
fi
build_app runtime pdm-federation
build_app datasite pdm-federation-datasite

# --- RabbitMQ, Redis, Prometheus -------------------------------------------------------
compose_files=docker-compose.yml
local_env=""
if [ "$local_base" = 1 ]; then
  upstream_ok=1
  for image in $UPSTREAM_SERVICES; do exists "$image" || try_pull "$image" || upstream_ok=0; done
  if [ "$upstream_ok" = 0 ]; then
    compose_files="docker-compose.yml:deploy/compose/local-images.yml"
    for svc in rabbitmq redis prometheus; do
      stag="$(printf '%s %s\n' "$base_id" "$(content_hash "$LOCAL_DIR/$svc.Dockerfile")" | sha256sum | cut -c1-16)"
      repo="pdm-federation-$svc"
      if exists "$repo:$stag"; then
        log "$repo:$stag present"
      else
        log "building $repo:$stag from Debian packages"
        "$DOCKER" build --quiet --build-arg "BASE_IMAGE=$base" -f "$LOCAL_DIR/$svc.Dockerfile" \
          -t "$repo:$stag" "$LOCAL_DIR" >/dev/null
      fi
      "$DOCKER" tag "$repo:$stag" "$repo:dev"
      local_env+="PDMFED_$(echo "$svc" | tr a-z A-Z)_IMAGE=$repo:$stag"$'\n'
    done
  fi
fi

mkdir -p "$(dirname "$OUT")"
{
  echo "# written by scripts/images.sh: the images this checkout builds, and how compose finds them"
  echo "PDMFED_IMAGE_TAG=$tag"
  printf '%s' "$local_env"
  echo "COMPOSE_FILE=$compose_files"
} >"$OUT"
log "done: $(tr '\n' ' ' <"$OUT" | sed 's/^# [^P]*//')"
