#!/usr/bin/env bash
# `make stack` / `make stack-down`: the whole stack on this machine with docker compose.
#   up:      secrets (once), factory partitions (once), then `docker-compose up -d`
#   down:    stop it and remove its containers, networks and volumes (secrets and data stay)
#   secrets DIR: only write the stack's secrets to DIR (`pdmfed keys init`; the stack test)
# Settings (environment): PDMFED_SECRETS_DIR (.pdmfed/secrets), PDMFED_DATA_DIR
# (.pdmfed/data), STACK_DATA (a C-MAPSS directory; synthetic fleet when unset).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY=${PY:-.venv/bin/python}
IMAGE_USER=10001:10001
export PDMFED_SECRETS_DIR=${PDMFED_SECRETS_DIR:-$ROOT/.pdmfed/secrets}
export PDMFED_DATA_DIR=${PDMFED_DATA_DIR:-$ROOT/.pdmfed/data}
export PDMFED_RUNS_DIR=${PDMFED_RUNS_DIR:-$ROOT/runs}

log() { printf 'stack: %s\n' "$*" >&2; }

# Every component's keys and secrets, one directory each, handed to the images' user (uid and
# gid 10001; Redis and Grafana read their own passwords through that group): one file per
# setting in <component>/secrets/, which its container mounts read-only (no env files),
# per-service Redis ACL users, the broker's rendered definitions, and the PostgreSQL
# credentials the replicas override (deploy/compose/replicas.yml) uses.
write_secrets() {
  "$PY" -m federation.cli keys init --out "$1" \
    --factory factory-1 --factory factory-2 --factory factory-3 \
    --broker amqp://rabbitmq:5672/pdmfed --redis redis://redis:6379/0 \
    --rabbitmq-definitions deploy/rabbitmq/definitions.json \
    --state-url postgresql://postgres:5432/pdmfed --owner "$IMAGE_USER" >/dev/null
  log "secrets written to $1 (pdmfed keys init)"
}

if [ "${1:-}" = secrets ]; then
  write_secrets "${2:?usage: stack.sh secrets DIR}"
  exit 0
fi

[ -f build/images.env ] || { log "build/images.env is missing: run make images"; exit 1; }
set -a
# shellcheck disable=SC1091
. build/images.env
set +a

compose() { docker-compose "$@"; }

case "${1:-up}" in
  up)
    if [ ! -d "$PDMFED_SECRETS_DIR" ]; then
      write_secrets "$PDMFED_SECRETS_DIR"
    fi
    if [ ! -f "$PDMFED_DATA_DIR/manifest.json" ]; then
      "$PY" -m federation.cli data partition --out "$PDMFED_DATA_DIR" --owner "$IMAGE_USER" \
        ${STACK_DATA:+--data "$STACK_DATA"}
    fi
    # Compose reads .env from here: later `docker-compose ...` commands find the same stack.
    if [ ! -f .env ] || head -1 .env | grep -q '^# written by scripts/stack.sh'; then
      {
        echo "# written by scripts/stack.sh (make stack); holds no secret"
        grep -v '^#' build/images.env
        echo "PDMFED_SECRETS_DIR=$PDMFED_SECRETS_DIR"
        echo "PDMFED_DATA_DIR=$PDMFED_DATA_DIR"
        echo "PDMFED_RUNS_DIR=$PDMFED_RUNS_DIR"
      } >.env
    else
      log ".env exists and was not written by make stack: leaving it alone"
    fi
    mkdir -p "$PDMFED_RUNS_DIR"
    chown "$IMAGE_USER" "$PDMFED_RUNS_DIR"
    services=(rabbitmq redis connector trainer-dispatch security aggregator factory-1 factory-2 factory-3 prometheus)
    # Grafana has no Debian package: it runs only where its upstream image can be pulled.
    case "$COMPOSE_FILE" in *local-images.yml*) ;; *) services+=(grafana) ;; esac
    compose up -d "${services[@]}"
    log "up; follow with: docker-compose ps   (COMPOSE_FILE=$COMPOSE_FILE)"
    log "run a campaign: docker-compose run --rm orchestrator pdmfed campaign --config /campaigns/synthetic.yaml"
    ;;
  down)
    compose down -v --remove-orphans
    ;;
  *)
    log "usage: stack.sh up|down|secrets DIR"
    exit 2
    ;;
esac
