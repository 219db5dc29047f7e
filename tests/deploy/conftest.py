"""Fixtures for the offline deployment-config tests."""

from __future__ import annotations

import pytest
from deploy_helpers import DEPLOY, require_tool, run


@pytest.fixture
def k8s_render():
    """Render a kustomize directory under deploy/k8s with `kubectl kustomize`."""
    kubectl = require_tool("kubectl")

    def _render(relative: str) -> str:
        result = run([kubectl, "kustomize", str(DEPLOY / "k8s" / relative)])
        assert result.returncode == 0, result.stderr
        return result.stdout

    return _render
