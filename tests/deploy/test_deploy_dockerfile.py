"""deploy/docker/Dockerfile: hadolint plus this project's own rules for the images."""

from __future__ import annotations

import re

import pytest
from deploy_helpers import DEPLOY, require_tool, run

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
_SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN|ENCRYPTION_KEY|KEY_SALT|PRIVATE)", re.I)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages(text: str) -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    global_args: dict[str, str] = {}  # ARGs before the first FROM may name the base image
    for word, rest in _instructions(text):
        if word == "ARG" and not stages:
            name, _, default = rest.partition("=")
            global_args[name.strip()] = default.strip()
        if word == "FROM":
            for name, default in global_args.items():
                rest = rest.replace(f"${{{name}}}", default).replace(f"${name}", default)
            parts = rest.split()
            current = parts[-1] if "AS" in (p.upper() for p in parts) else f"stage{len(stages)}"
            stages[current] = [(word, rest)]
        elif current is not None:
            stages[current].append((word, rest))
    return stages


def lint(text: str) -> list[str]:
    """Problems with a Dockerfile by the rules these images must keep (empty = fine)."""
    problems = []
    stages = _stages(text)
    for name, body in stages.items():
        base = body[0][1].split()[0]
        if ":" not in base or base.endswith(":latest"):
            if base not in stages:
                problems.append(f"{name}: base image {base} is not pinned to a tag")
        for word, rest in body:
            if word == "ADD" and re.search(r"https?://", rest):
                problems.append(f"{name}: ADD of a URL (use a pinned download and verify it)")
            if word in ("ENV", "ARG") and _SECRETISH.search(rest):
                problems.append(f"{name}: secret-looking {word} {rest.split('=')[0]}")
    final = list(stages)[-1] if stages else None
    for name in ("runtime", "datasite", final):
        body = stages.get(name, [])
        users = [rest for word, rest in body if word == "USER"]
        inherited = name != "runtime" and any(w == "USER" for w, _ in stages.get("runtime", []))
        if not users and not inherited:
            problems.append(f"{name}: no USER, the image would run as root")
        if any(u.split(":")[0] in ("root", "0") for u in users):
            problems.append(f"{name}: runs as root")
        if not any(word == "HEALTHCHECK" for word, _ in body):
            problems.append(f"{name}: no HEALTHCHECK")
    return problems


def test_the_images_follow_the_project_dockerfile_rules():
    assert lint(DOCKERFILE.read_text()) == []


def test_the_rules_catch_a_root_unpinned_image_with_a_baked_secret():
    bad = (
        "FROM python AS runtime\n"
        "ADD https://example.invalid/x.tgz /x\n"
        "ENV PDMFED_ENCRYPTION_KEY=hunter2\n"
        'CMD ["pdmfed"]\n'
    )
    problems = " | ".join(lint(bad))
    for expected in ("not pinned", "ADD of a URL", "secret-looking", "no USER", "no HEALTHCHECK"):
        assert expected in problems


def test_there_is_a_service_runtime_and_a_datasite_target_with_their_health_endpoints():
    stages = _stages(DOCKERFILE.read_text())
    assert {"builder", "runtime", "datasite"} <= set(stages)
    health = {
        name: " ".join(r for w, r in body if w == "HEALTHCHECK") for name, body in stages.items()
    }
    assert "/healthz" in health["runtime"]
    assert "/api/v2/metadata" in health["datasite"]
    assert "pdmfed datasite launch" in " ".join(r for w, r in stages["datasite"] if w == "CMD")


def test_the_base_image_is_an_argument_defaulting_to_the_official_python_image():
    text = DOCKERFILE.read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    froms = [rest for word, rest in _instructions(text) if word == "FROM"]
    assert all(f.startswith(("${BASE_IMAGE} AS", "deps AS", "runtime AS")) for f in froms), froms


def test_the_rules_see_through_a_base_image_argument():
    unpinned = (
        "ARG BASE_IMAGE=python\nFROM ${BASE_IMAGE} AS runtime\nUSER 1:1\nHEALTHCHECK CMD true\n"
    )
    assert "not pinned" in " ".join(lint(unpinned))
    pinned = unpinned.replace("=python", "=python:3.11-slim")
    assert "not pinned" not in " ".join(lint(pinned))


def test_an_air_gapped_build_installs_only_from_the_wheelhouse():
    text = DOCKERFILE.read_text()
    assert "COPY deploy/docker/wheels/ /wheels/" in text
    assert text.count("--no-index --find-links /wheels") == 2  # dependencies, project wheel


def test_torch_is_the_pinned_cpu_build():
    text = DOCKERFILE.read_text()
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in text


def test_when_hadolint_lints_the_dockerfile__it_reports_nothing():
    hadolint = require_tool("hadolint")
    result = run([hadolint, "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_when_hadolint_sees_a_bad_dockerfile__it_fails(tmp_path):
    hadolint = require_tool("hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    result = run([hadolint, "--no-color", str(bad)])
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize(
    "secret", ["PDMFED_ENCRYPTION_KEY", "PDMFED_KEY_SALT", "PDMFED_DATASITE_ADMIN_PASSWORD"]
)
def test_no_secret_setting_is_set_by_any_instruction(secret):
    instructions = " ".join(rest for _, rest in _instructions(DOCKERFILE.read_text()))
    assert secret not in instructions
