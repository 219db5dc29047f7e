"""docker-compose.yml, its local-images override and .env.example: schema, wiring, secrets."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
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
        assert f"{SECRETS}/{name}/secrets:{SECRETS_DIR}:ro" in services[name]["volumes"]


def test_each_datasite_serves_its_own_partition_on_every_interface():
    services = _compose()["services"]
    for name in FACTORIES:
        svc = services[name]
        assert svc["environment"] == {
            "PDMFED_DATASITE_NAME": name,
            "PDMFED_DATASITE_PORT": "8080",
            "PDMFED_SECRETS_DIR": SECRETS_DIR,
        }
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
    assert redis["volumes"] == [
        f"{SECRETS}/redis/users.acl:/etc/redis/users.acl:ro",
        f"{SECRETS}/redis/secrets:{SECRETS_DIR}:ro",  # the health-check user's password
    ]
    assert "env_file" not in redis and "environment" not in redis
    assert "--user pdmfed-health --askpass ping <" in redis["healthcheck"]["test"][1]
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
    for path in (COMPOSE, ROOT / "deploy/compose/replicas.yml"):
        for line in path.read_text().splitlines():
            if line.strip().startswith("#"):
                continue
            for key in ("PDMFED_ENCRYPTION_KEY", "PDMFED_KEY_SALT", "PASS=", "amqp://", "redis://"):
                assert key not in line, f"secret in {path.name}: {line.strip()}"
            # a password only as a file the container reads
            if "PASSWORD" in line:
                assert re.search(r"PASSWORD(_FILE: /run/|: \$\$__file\{/run/)", line), line


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
        # its own database role's URL: a file in a second secrets directory, not its environment
        assert "PDMFED_STATE_URL" not in svc["environment"], name
        state = svc["environment"]["PDMFED_SECRETS_DIR"].split(":")[1]
        assert f"{tmp_path}/{name}/state-secrets:{state}:ro" in svc["volumes"], name


# Secrets reach a container as files, never through its environment (as on Kubernetes,
# test_deploy_k8s.py): /proc/<pid>/environ, every child process (PySyft's workers), crash
# reports and `docker inspect` all show a container's environment.

#: PDMFED_SECRETS_DIR in every pdmfed container: its own `<component>/secrets`, read-only.
SECRETS_DIR = "/run/pdmfed/secrets"
#: The compose files of each way the stack runs: as `make stack` and the stack test run it
#: where no registry answers, and with the replicas override (PostgreSQL).
VARIANTS = {
    "stack": "docker-compose.yml:deploy/compose/local-images.yml",
    "replicas": "docker-compose.yml:deploy/compose/replicas.yml",
}
#: What `keys init` writes next to the secrets but is not secret (URLs without credentials,
#: account names).
NOT_SECRET = {
    "pdmfed_redis_url",
    "pdmfed_datasite_admin_email",
    "pdmfed_datasite_orchestrator_email",
}
#: Images whose entrypoint reads its *_FILE secrets as root before it drops to its own user.
ROOT_ENTRYPOINT = {"postgres"}
_USER = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE_TEXT, re.M)
#: The user every pdmfed image runs as (deploy/docker/Dockerfile).
IMAGE_USER = (int(_USER[1]), int(_USER[2]))


def _env_pairs(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@pytest.fixture(scope="module")
def stack_secrets(tmp_path_factory) -> Path:
    """The stack's secrets exactly as `make stack` and the stack test write them
    (`scripts/stack.sh secrets DIR`: `pdmfed keys init ... --owner` the images' user)."""
    if os.geteuid() != 0:
        pytest.skip("scripts/stack.sh secrets hands the files to the images' user: needs root")
    out = tmp_path_factory.mktemp("compose-secrets") / "secrets"
    result = run(
        ["bash", str(ROOT / "scripts" / "stack.sh"), "secrets", str(out)],
        env={**os.environ, "PY": sys.executable},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="module")
def merged(stack_secrets, tmp_path_factory) -> dict[str, tuple[dict, str]]:
    """Each variant as docker-compose itself merges and interpolates it over those secrets:
    variant -> (the config, its text). env_file contents land in `environment` here."""
    compose = require_tool("docker-compose")
    empty = tmp_path_factory.mktemp("compose-env") / "empty.env"
    empty.write_text("")
    views = {}
    for variant, files in VARIANTS.items():
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PDMFED_SECRETS_DIR": str(stack_secrets),
            "COMPOSE_FILE": files,
        }
        result = run([compose, "--env-file", str(empty), "config"], cwd=ROOT, env=env)
        assert result.returncode == 0, (variant, result.stdout + result.stderr)
        views[variant] = (yaml.safe_load(result.stdout), result.stdout)
    return views


def _component(service: str) -> str:
    """The `pdmfed keys init` directory a pdmfed container's secrets come from."""
    if service == "orchestrator" or service in SERVICES:
        return service
    return f"factories/{service}"


def _pdmfed_services(config: dict) -> dict[str, dict]:
    return {
        name: svc
        for name, svc in config["services"].items()
        if svc.get("image", "").split(":")[0] in ("pdm-federation", "pdm-federation-datasite")
    }


def _environment(svc: dict) -> dict[str, str]:
    """A container's environment as compose gives it (its `$$` escapes undone)."""
    return {k: str(v).replace("$$", "$") for k, v in (svc.get("environment") or {}).items()}


def _mounts(svc: dict) -> dict[str, tuple[str | None, bool]]:
    """Container path -> (host source or volume name, read-only) of each mount."""
    mounts = {}
    for volume in svc.get("volumes", []):
        if isinstance(volume, dict):
            mounts[volume["target"]] = (volume.get("source"), bool(volume.get("read_only")))
        else:
            source, target, *mode = volume.split(":")
            mounts[target] = (source, bool(mode) and "ro" in mode[0].split(","))
    return mounts


def _host_path(svc: dict, path: str) -> tuple[Path, bool]:
    """(where ``path`` inside the container is on the host, whether its mount is read-only)."""
    hits = [(t, m) for t, m in _mounts(svc).items() if path == t or path.startswith(t + "/")]
    assert hits, f"nothing is mounted at {path}"
    target, (source, read_only) = max(hits, key=lambda hit: len(hit[0]))
    assert source and source.startswith("/"), f"{path}: not a bind mount ({source})"
    return Path(source) / os.path.relpath(path, target), read_only


def _secret_names_and_values(out: Path) -> tuple[set[str], dict[str, str]]:
    """Every setting name keys init wrote as a secret (upper case), and every secret value
    (where it was written -> value)."""
    names, values = {"PDMFED_STATE_URL", "POSTGRES_PASSWORD"}, {}
    for path in out.rglob("*"):
        if not path.is_file():
            continue
        where = str(path.relative_to(out))
        if path.parent.name == "secrets" and path.parent != out and path.name not in NOT_SECRET:
            names.add(path.name.upper())
            values[where] = path.read_text()
        elif path.suffix == ".password":
            values[where] = path.read_text()
        elif path.name == "state.env":
            values[where] = _env_pairs(path)["PDMFED_STATE_URL"]
        elif path.name == "env" and path.parent.name == "postgres":
            values[where] = _env_pairs(path)["POSTGRES_PASSWORD"]
    return names, values


def test_no_compose_file_gives_a_container_an_env_file():
    for path in (COMPOSE, *sorted((ROOT / "deploy" / "compose").glob("*.yml"))):
        services = yaml.safe_load(path.read_text())["services"]
        for name, svc in services.items():
            assert "env_file" not in svc, (path.name, name, svc["env_file"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_container_has_a_secret_in_its_environment_or_anywhere_in_the_config(
    variant, merged, stack_secrets
):
    config, text = merged[variant]
    names, values = _secret_names_and_values(stack_secrets)
    for name, svc in config["services"].items():
        for key, value in _environment(svc).items():
            if key == "GF_SECURITY_ADMIN_PASSWORD":
                # Grafana reads the file itself ($__file{}): the environment holds its path
                assert re.fullmatch(r"\$__file\{/[^}]+\}", value), (variant, name, key)
                continue
            assert key.upper() not in names, (variant, name, key)
    leaked = [where for where, value in values.items() if value and value in text]
    assert leaked == [], (variant, leaked)


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_pdmfed_container_mounts_exactly_its_own_secrets_folder_read_only(
    variant, merged, stack_secrets
):
    config, _ = merged[variant]
    pdmfed = _pdmfed_services(config)
    assert set(pdmfed) == {*SERVICES, *FACTORIES, "orchestrator"}
    for name, svc in pdmfed.items():
        own = stack_secrets / _component(name)
        dirs = _environment(svc).get("PDMFED_SECRETS_DIR", "").split(os.pathsep)
        assert dirs[0] == SECRETS_DIR, (variant, name, dirs)
        for directory in dirs:
            source, read_only = _host_path(svc, directory)
            assert read_only, (variant, name, directory)
            assert source.parent == own, (variant, name, source)  # its own component's only
        assert _host_path(svc, SECRETS_DIR)[0] == own / "secrets", (variant, name)
        assert "user" not in svc, name  # the image's user, which owns the files


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_pdmfed_container_sees_every_secret_of_its_component_from_its_files_alone(
    variant, merged, stack_secrets, monkeypatch
):
    from federation.config import Settings
    from pydantic import SecretStr

    config, _ = merged[variant]
    for name, svc in _pdmfed_services(config).items():
        component = stack_secrets / _component(name)
        expected = {f.name: f.read_text() for f in (component / "secrets").iterdir()}
        if variant == "replicas" and name in SERVICES:
            expected["pdmfed_state_url"] = _env_pairs(component / "state.env")["PDMFED_STATE_URL"]
        environment = _environment(svc)
        assert "PDMFED_SECRETS_DIR" in environment, (variant, name)
        # the directories as the container sees them: bind mounts of these host directories
        mounted = [
            _host_path(svc, d)[0] for d in environment["PDMFED_SECRETS_DIR"].split(os.pathsep)
        ]
        assert {f.name for d in mounted for f in d.iterdir()} == set(expected), (variant, name)
        with monkeypatch.context() as env:
            for key in [k for k in os.environ if k.startswith("PDMFED_")]:
                env.delenv(key)
            for key, value in environment.items():
                if key.startswith("PDMFED_"):
                    env.setenv(key, value)
            env.setenv("PDMFED_SECRETS_DIR", os.pathsep.join(str(d) for d in mounted))
            settings = Settings()
            for file_name, value in expected.items():
                got = getattr(settings, file_name.removeprefix("pdmfed_"))
                got = got.get_secret_value() if isinstance(got, SecretStr) else got
                assert got == value, (variant, name, file_name)
            if name in (*SERVICES, "orchestrator"):
                assert settings.amqp_url and settings.redis_password, (variant, name)
                settings.validate_secrets()
            else:
                assert settings.datasite_admin_password and settings.datasite_orchestrator_password


def test_redis_grafana_and_postgres_read_their_passwords_from_their_own_files(
    merged, stack_secrets
):
    config, _ = merged["replicas"]  # the stack with PostgreSQL: every server
    redis = config["services"]["redis"]
    health = (stack_secrets / "redis" / "secrets" / "rediscli_auth").read_text()
    # redis-cli reads the health-check user's password on stdin: in no environment or argv
    (path,) = re.findall(r"--askpass ping < (\S+)", redis["healthcheck"]["test"][-1])
    source, read_only = _host_path(redis, path)
    assert read_only and source.read_text() == health
    assert source.parent == stack_secrets / "redis" / "secrets"

    grafana = config["services"]["grafana"]
    environment = _environment(grafana)
    # the image's run.sh would export a GF_*__FILE's content into grafana-server's environment
    assert not [k for k in environment if k.endswith("__FILE")], environment
    (path,) = re.findall(r"^\$__file\{(.+)\}$", environment["GF_SECURITY_ADMIN_PASSWORD"])
    source, read_only = _host_path(grafana, path)
    assert read_only and source.parent == stack_secrets / "grafana" / "secrets"
    assert (
        source.read_text()
        == (stack_secrets / "grafana" / "secrets" / "gf_security_admin_password").read_text()
    )

    postgres = config["services"]["postgres"]
    superuser = _env_pairs(stack_secrets / "postgres" / "env")["POSTGRES_PASSWORD"]
    source, read_only = _host_path(postgres, _environment(postgres)["POSTGRES_PASSWORD_FILE"])
    assert read_only and source.read_text() == superuser
    assert source.parent == stack_secrets / "postgres" / "secrets"


def _readable(path: Path, uid: int | None, gids: set[int], as_root: bool, mask: int) -> bool:
    """Whether a process of ``uid`` (None: unknown, not the owner) in ``gids`` can read a file
    (mask 4) or list a directory (mask 5)."""
    st = path.stat()
    if as_root:
        return True
    if uid is not None and st.st_uid == uid:
        return (st.st_mode >> 6) & mask == mask
    if st.st_gid in gids:
        return (st.st_mode >> 3) & mask == mask
    return st.st_mode & mask == mask


def test_each_container_can_read_its_secret_files_as_its_own_user_and_the_world_cannot(
    merged, stack_secrets
):
    config, _ = merged["replicas"]
    pdmfed = _pdmfed_services(config)
    checked = set()
    for name, svc in config["services"].items():
        if name in pdmfed:
            uid, gids, as_root = IMAGE_USER[0], {IMAGE_USER[1]}, False
        else:
            # a server image's own user (its uid differs between images): by group only
            uid, gids = None, {int(g) for g in svc.get("group_add", [])}
            as_root = name in ROOT_ENTRYPOINT and "user" not in svc
            if as_root:  # root reads files it does not own only with DAC_OVERRIDE
                assert "ALL" not in svc.get("cap_drop", []) or "DAC_OVERRIDE" in svc["cap_add"]
        for source, _ in _mounts(svc).values():
            if not source or not source.startswith(str(stack_secrets)):
                continue
            root = Path(source)
            files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
            for directory in {root} if root.is_dir() else set():
                assert _readable(directory, uid, gids, as_root, 5), (name, directory)
            for path in files:
                where = str(path.relative_to(stack_secrets))
                assert _readable(path, uid, gids, as_root, 4), (name, where)
                checked.add(where)
    secrets = set(_secret_names_and_values(stack_secrets)[1])
    secrets |= {str(p.relative_to(stack_secrets)) for p in stack_secrets.rglob("*.key")}
    for where in secrets:  # on the host: the images' user (and its group) only
        mode = (stack_secrets / where).stat().st_mode
        assert mode & 0o007 == 0, (where, oct(mode))
    # every secret file a server or service reads is mounted into it (the broker admin's
    # password and the env files are for operators only)
    read = {w for w in secrets if "/secrets/" in w and not w.startswith("rabbitmq/")}
    assert read <= checked, sorted(read - checked)
