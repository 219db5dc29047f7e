"""docker-compose.yml and .env.example: schema, wiring, networks and secrets handling."""

from __future__ import annotations

import re

import yaml
from deploy_helpers import ROOT, SERVICES, require_tool, run

COMPOSE = ROOT / "docker-compose.yml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env_example() -> dict[str, str]:
    pairs = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def test_when_check_jsonschema_validates_compose__it_matches_the_compose_spec():
    tool = require_tool("check-jsonschema")
    result = run([tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_stack_has_every_part_the_issue_lists():
    services = _compose()["services"]
    expected = {"rabbitmq", "redis", "prometheus", "grafana", "orchestrator", *SERVICES}
    expected |= {"factory-1", "factory-2", "factory-3"}
    assert expected <= set(services)


def test_each_service_runs_its_pdmfed_command_with_its_own_broker_user():
    services = _compose()["services"]
    for name in SERVICES:
        svc = services[name]
        assert svc["command"] == ["pdmfed", "service", name]
        assert svc["env_file"] == [".env"]
        url = svc["environment"]["PDMFED_AMQP_URL"]
        assert url.startswith(f"amqp://pdmfed-{name}:${{PDMFED_RABBITMQ_PASSWORD_")
        assert url.endswith("@rabbitmq:5672/pdmfed")
        assert svc["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]


def test_only_the_connector_shares_a_network_with_the_datasites():
    services = _compose()["services"]
    factory_members = {n for n, s in services.items() if "factory" in s.get("networks", [])}
    assert factory_members == {"connector", "factory-1", "factory-2", "factory-3"}
    assert _compose()["networks"]["factory"]["internal"] is True
    assert _compose()["networks"]["backend"]["internal"] is True


def test_the_orchestrator_is_a_profiled_one_shot_that_runs_pdmfed_campaign():
    orch = _compose()["services"]["orchestrator"]
    assert orch["profiles"] == ["tools"]
    assert orch["command"][:2] == ["pdmfed", "campaign"]
    assert orch.get("restart") is None


def test_rabbitmq_loads_config_plugins_and_definitions_from_deploy():
    mounts = " ".join(_compose()["services"]["rabbitmq"]["volumes"])
    for part in ("rabbitmq.conf", "enabled_plugins", "definitions.json"):
        assert f"/etc/rabbitmq/{part}:ro" in mounts
    plugins = (ROOT / "deploy/rabbitmq/enabled_plugins").read_text()
    assert "rabbitmq_management" in plugins and "rabbitmq_prometheus" in plugins


def test_every_required_compose_variable_is_in_env_example():
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE.read_text()))
    assert required, "compose should refuse to start without its secrets"
    assert required <= set(_env_example())


def test_env_example_names_every_secret_setting_of_design_section_9():
    env = _env_example()
    for key in ("PDMFED_ENCRYPTION_KEY", "PDMFED_KEY_SALT", "PDMFED_DATASITE_ADMIN_PASSWORD"):
        assert key in env


def test_no_secret_value_is_written_into_compose():
    text = COMPOSE.read_text()
    for key in ("PDMFED_ENCRYPTION_KEY", "PDMFED_KEY_SALT", "PASSWORD:", "PASS="):
        for line in text.splitlines():
            if key in line and not line.strip().startswith("#"):
                assert "${" in line, f"literal secret in compose: {line.strip()}"


def test_no_env_file_is_tracked_by_git():
    tracked = run(["git", "ls-files", "--", ".env", "**/.env"], cwd=ROOT)
    assert tracked.returncode == 0 and tracked.stdout.strip() == ""


def test_dockerignore_keeps_secrets_and_vcs_out_of_the_build_context():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "**" in lines  # deny by default, then allow-list
    assert "**/.env" in lines and "**/*.key" in lines
    allowed = {line[1:] for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "shared/", "services/"}
