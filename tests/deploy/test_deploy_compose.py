"""docker-compose.yml, its local-images override and .env.example: schema, wiring, secrets."""

from __future__ import annotations

import os
import re

import yaml
from deploy_helpers import DEPLOY, ROOT, SERVICES, require_tool, run

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE_TEXT = (DEPLOY / "docker" / "Dockerfile").read_text()
SECRETS = "${PDMFED_SECRETS_DIR:-./.pdmfed/secrets}"
FACTORIES = ("factory-1", "factory-2", "factory-3")


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
    for path in (COMPOSE, ROOT / "deploy/compose/local-images.yml"):
        result = run([tool, "--builtin-schema", "vendor.compose-spec", str(path)])
        assert result.returncode == 0, result.stdout + result.stderr


def test_when_docker_compose_1_29_reads_the_file_with_its_override__it_accepts_them(tmp_path):
    assert "name" not in _compose()  # a top-level name: is refused by docker-compose 1.29
    compose = require_tool("docker-compose")
    for component in (
        *SERVICES,
        "orchestrator",
        *(f"factories/{f}" for f in FACTORIES),
        "redis",
        "grafana",
    ):
        (tmp_path / component).mkdir(parents=True)
        (tmp_path / component / "env").write_text("")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PDMFED_SECRETS_DIR": str(tmp_path),
        "COMPOSE_FILE": "docker-compose.yml:deploy/compose/local-images.yml",
    }
    (tmp_path / "empty.env").write_text("")
    result = run(
        [compose, "--env-file", str(tmp_path / "empty.env"), "config", "--quiet"], cwd=ROOT, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_stack_has_every_part_the_issue_lists():
    services = _compose()["services"]
    expected = {"rabbitmq", "redis", "prometheus", "grafana", "orchestrator", *SERVICES, *FACTORIES}
    assert expected <= set(services)


def test_each_service_runs_its_pdmfed_command_under_its_stable_identity():
    services = _compose()["services"]
    for name in SERVICES:
        svc = services[name]
        assert svc["command"] == ["pdmfed", "service", name]
        # the signing identity is the service name, so its keys can be prepared in advance
        assert svc["environment"]["PDMFED_SERVICE_ID"] == name
        # least-privilege broker users cannot declare other services' queues: the broker
        # loads the topology from its definitions instead
        assert svc["environment"]["PDMFED_DECLARE_TOPOLOGY"] == "false"
        assert svc["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
        assert svc["restart"] == "unless-stopped"


def _component_dirs(svc: dict) -> set[str]:
    """The PDMFED_SECRETS_DIR components a container reads (env files and mounts)."""
    volumes = [v.replace(SECRETS, "SECRETS").split(":")[0] for v in svc.get("volumes", [])]
    sources = [s.replace(SECRETS, "SECRETS") for s in svc.get("env_file", [])] + volumes
    parts = [s.split("/") for s in sources if s.startswith("SECRETS/")]
    return {"/".join(p[1:3]) if p[1] == "factories" else p[1] for p in parts}


def test_each_container_reads_only_its_own_component_secrets():
    services = _compose()["services"]
    for name, svc in services.items():
        expected = (
            set() if name == "prometheus" else {f"factories/{name}" if name in FACTORIES else name}
        )
        assert _component_dirs(svc) == expected, name
    for name in (*SERVICES, "orchestrator"):
        assert f"{SECRETS}/{name}/keys:/run/pdmfed/keys:ro" in services[name]["volumes"]


def test_each_datasite_serves_its_own_partition_on_every_interface():
    services = _compose()["services"]
    for name in FACTORIES:
        svc = services[name]
        assert svc["environment"] == {"PDMFED_DATASITE_NAME": name, "PDMFED_DATASITE_PORT": "8080"}
        assert f"${{PDMFED_DATA_DIR:-./.pdmfed/data}}/{name}:/data:ro" in svc["volumes"]
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
        assert "ports" not in svc  # only the connector reaches a datasite
    datasite_stage = DOCKERFILE_TEXT.split("AS datasite", 1)[1]
    assert "--host 0.0.0.0" in datasite_stage
    assert "PDMFED_DATASITE_DATA=/data/partition.npz" in datasite_stage


def test_only_the_connector_shares_a_network_with_the_datasites():
    services = _compose()["services"]
    factory_members = {n for n, s in services.items() if "factory" in s.get("networks", [])}
    assert factory_members == {"connector", *FACTORIES}
    networks = _compose()["networks"]
    assert networks["factory"]["internal"] is True
    assert networks["backend"]["internal"] is True
    assert networks["monitoring"]["internal"] is True


def test_only_the_user_interfaces_publish_ports_and_only_on_loopback():
    for name, svc in _compose()["services"].items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
        assert ("ui" in svc.get("networks", [])) == bool(svc.get("ports")), name


def test_the_orchestrator_is_a_profiled_one_shot_whose_runs_land_on_the_host():
    orch = _compose()["services"]["orchestrator"]
    assert orch["profiles"] == ["tools"]
    assert orch["command"][:2] == ["pdmfed", "campaign"]
    assert orch.get("restart") is None
    assert "${PDMFED_RUNS_DIR:-./runs}:/var/lib/pdmfed/runs" in orch["volumes"]
    assert orch["working_dir"] == "/var/lib/pdmfed"  # `--out runs` (the default) is that mount


def test_rabbitmq_loads_config_plugins_and_rendered_definitions():
    mounts = _compose()["services"]["rabbitmq"]["volumes"]
    joined = " ".join(mounts)
    for part in ("rabbitmq.conf", "enabled_plugins", "definitions.json"):
        assert f"/etc/rabbitmq/{part}:ro" in joined
    assert f"{SECRETS}/rabbitmq/definitions.json:/etc/rabbitmq/definitions.json:ro" in mounts
    plugins = (ROOT / "deploy/rabbitmq/enabled_plugins").read_text()
    assert "rabbitmq_management" in plugins and "rabbitmq_prometheus" in plugins


def test_redis_requires_per_service_acl_users_and_checks_health_with_a_ping_only_user():
    redis = _compose()["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server" and "--requirepass" not in command
    assert command[command.index("--aclfile") + 1] == "/etc/redis/users.acl"
    assert redis["volumes"] == [f"{SECRETS}/redis/users.acl:/etc/redis/users.acl:ro"]
    # its environment holds only the health-check user's password (REDISCLI_AUTH)
    assert redis["env_file"] == [f"{SECRETS}/redis/env"]
    assert "--user pdmfed-health ping" in redis["healthcheck"]["test"][1]
    assert redis["user"] == "redis" and redis["read_only"] is True and redis["cap_drop"] == ["ALL"]
    services = _compose()["services"]
    for name in (*SERVICES, "orchestrator"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_the_local_images_override_replaces_only_the_upstream_images():
    override = yaml.safe_load((ROOT / "deploy/compose/local-images.yml").read_text())
    assert set(override["services"]) == {"rabbitmq", "redis", "prometheus"}
    for name, svc in override["services"].items():
        assert set(svc) == {"image"} and f"pdm-federation-{name}" in svc["image"]


def test_env_example_holds_compose_settings_but_no_live_secret():
    env = _env_example()
    for key in (
        "PDMFED_ENCRYPTION_KEY",
        "PDMFED_KEY_SALT",
        "PDMFED_DATASITE_ADMIN_PASSWORD",
        "PDMFED_REDIS_URL",
        "PDMFED_AMQP_URL",
        "GRAFANA_ADMIN_PASSWORD",
    ):
        assert key not in env, key
    referenced = set(re.findall(r"\$\{([A-Z0-9_]+)(?::-[^}]*)?\}", COMPOSE.read_text()))
    documented = set(re.findall(r"^#? ?([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert referenced <= documented, referenced - documented


def test_no_secret_value_is_written_into_compose():
    text = COMPOSE.read_text()
    for key in (
        "PDMFED_ENCRYPTION_KEY",
        "PDMFED_KEY_SALT",
        "PASSWORD",
        "PASS=",
        "amqp://",
        "redis://",
    ):
        for line in text.splitlines():
            assert key not in line or line.strip().startswith("#"), (
                f"secret in compose: {line.strip()}"
            )


def test_no_env_file_is_tracked_by_git():
    tracked = run(["git", "ls-files", "--", ".env", "**/.env"], cwd=ROOT)
    assert tracked.returncode == 0 and tracked.stdout.strip() == ""


def test_dockerignore_keeps_secrets_and_vcs_out_of_the_build_context():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "**" in lines  # deny by default, then allow-list
    assert "**/.env" in lines and "**/*.key" in lines
    allowed = {line[1:] for line in lines if line.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "README.md",
        "shared/",
        "services/",
        "deploy/docker/wheels/",
    }


def test_the_replicas_override_runs_two_of_each_service_on_postgresql_without_sqlite_volumes(
    tmp_path,
):
    tool = require_tool("check-jsonschema")
    override = ROOT / "deploy/compose/replicas.yml"
    result = run([tool, "--builtin-schema", "vendor.compose-spec", str(override)])
    assert result.returncode == 0, result.stdout + result.stderr
    compose = require_tool("docker-compose")
    for component in (
        *SERVICES,
        "orchestrator",
        *(f"factories/{f}" for f in FACTORIES),
        "redis",
        "grafana",
        "postgres",
    ):
        (tmp_path / component).mkdir(parents=True)
        (tmp_path / component / "env").write_text("")
        (tmp_path / component / "state.env").write_text(
            f"PDMFED_STATE_URL=postgresql://db/{component.split('/')[-1]}\n"
        )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PDMFED_SECRETS_DIR": str(tmp_path),
        "COMPOSE_FILE": "docker-compose.yml:deploy/compose/replicas.yml",
    }
    (tmp_path / "empty.env").write_text("")
    result = run([compose, "--env-file", str(tmp_path / "empty.env"), "config"], cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    merged = yaml.safe_load(result.stdout)
    postgres = merged["services"]["postgres"]
    # the roles' SQL (verifiers only), run by the image at its first start, read-only
    assert f"{tmp_path}/postgres/initdb:/docker-entrypoint-initdb.d:ro" in postgres["volumes"]
    for name in SERVICES:
        svc = merged["services"][name]
        assert svc["deploy"]["replicas"] == 2, name
        assert "postgres" in svc["depends_on"], name
        named = {
            v.split(":")[0] for v in svc["volumes"] if isinstance(v, str) and not v.startswith("/")
        }
        assert named == {f"{name}-blobs"}, (name, svc["volumes"])  # no SQLite state volume
        tmpfs = [v for v in svc["volumes"] if isinstance(v, dict)]
        assert tmpfs == [{"target": "/var/lib/pdmfed", "type": "tmpfs"}], name
        assert svc["environment"]["PDMFED_STATE_URL"] == f"postgresql://db/{name}", name
