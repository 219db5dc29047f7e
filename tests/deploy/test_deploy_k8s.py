"""deploy/k8s: kustomize renders, kubernetes-validate --strict, CRDs, and policy wiring."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from deploy_helpers import DEPLOY, ROOT, SERVICES, load_yaml_docs, require_tool, run
from pydantic import SecretStr

OVERLAYS = [
    "base",
    "overlays/rabbitmq-operator",
    "overlays/prometheus-operator",
    "overlays/replicas",
]
#: Custom resources kubernetes-validate has no schema for -> our schema in deploy/k8s/schemas.
CRD_SCHEMAS = {
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): "rabbitmqcluster-rabbitmq-v1beta1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
}


def _kinds(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("target", OVERLAYS)
def test_when_rendered__every_builtin_object_passes_strict_validation(target, k8s_render):
    validator = require_tool("kubernetes-validate")
    rendered = k8s_render(target)
    result = run([validator, "--strict", "--quiet", "-"], stdin=rendered)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout
    # Only the custom resources may lack a built-in schema; they are checked below.
    for line in result.stdout.splitlines():
        assert line.startswith("WARN") and any(k in line for _, k in CRD_SCHEMAS), line


@pytest.mark.parametrize("target", OVERLAYS)
def test_when_rendered__every_custom_resource_matches_its_vendored_schema(target, k8s_render):
    for doc in load_yaml_docs(k8s_render(target)):
        key = (doc["apiVersion"], doc["kind"])
        if "." in doc["apiVersion"].split("/")[0] and not doc["apiVersion"].endswith("k8s.io/v1"):
            assert key in CRD_SCHEMAS, f"no schema for custom resource {key}"
        if key in CRD_SCHEMAS:
            schema = json.loads((DEPLOY / "k8s/schemas" / CRD_SCHEMAS[key]).read_text())
            jsonschema.Draft202012Validator(schema).validate(doc)


def test_the_crd_schemas_reject_a_misspelled_field():
    schema = json.loads(
        (
            DEPLOY / "k8s/schemas" / CRD_SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")]
        ).read_text()
    )
    bad = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"},
           "spec": {"selector": {}, "endpoints": [{"port": "metrics", "intervall": "15s"}]}}  # fmt: skip
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(bad)


def test_every_service_deployment_is_probed_limited_and_locked_down(k8s_render):
    docs = load_yaml_docs(k8s_render("base"))
    deployments = _kinds(docs, "Deployment")
    for name in SERVICES:
        pod = deployments[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == ["pdmfed", "service", name]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert "memory" in container["resources"]["limits"]
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["serviceAccountName"] == name and pod["automountServiceAccountToken"] is False
        # a stable signing identity (the service name, not the pod's) whose key is prepared
        assert {"name": "PDMFED_SERVICE_ID", "value": name} in container["env"]
        # its secrets as files (below), none in its environment
        assert not any("secretRef" in e for e in container["envFrom"])
        assert not any("valueFrom" in e for e in container["env"])


def _secret_names(volume: dict) -> set[str]:
    if "secret" in volume:
        return {volume["secret"]["secretName"]}
    return {
        s["secret"]["name"] for s in volume.get("projected", {}).get("sources", []) if "secret" in s
    }


def test_each_pod_mounts_only_its_own_keys_and_secrets(k8s_render):
    docs = load_yaml_docs(k8s_render("base"))
    deployments = _kinds(docs, "Deployment")
    for name in SERVICES:
        volumes = deployments[name]["spec"]["template"]["spec"]["volumes"]
        mounted = set().union(*(_secret_names(v) for v in volumes))
        expected = {f"pdmfed-{name}", f"pdmfed-{name}-keys"} | (
            {"pdmfed-factory-public-keys"} if name == "security" else set()
        )
        expected |= {"pdmfed-connector-datasites"} if name == "connector" else set()
        assert mounted == expected, name
    for i in (1, 2, 3):
        pod = deployments[f"factory-{i}"]["spec"]["template"]["spec"]
        assert _secret_refs(pod) == {f"pdmfed-factory-{i}", f"pdmfed-factory-{i}-keys"}


def test_each_datasite_serves_its_own_partition_on_every_interface_under_the_campaign_name(
    k8s_render,
):
    docs = load_yaml_docs(k8s_render("base"))
    deployments, services = _kinds(docs, "Deployment"), _kinds(docs, "Service")
    for i in (1, 2, 3):
        name = f"factory-{i}"
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        cmd = container["command"]
        assert cmd[:3] == ["pdmfed", "datasite", "launch"]
        args = dict(zip(cmd[3::2], cmd[4::2], strict=True))
        assert args["--name"] == name and args["--host"] == "0.0.0.0" and args["--port"] == "8080"
        assert args["--data"] == "/data/partition.npz"
        assert [p["port"] for p in services[name]["spec"]["ports"]] == [8080]
    campaign = yaml.safe_load((DEPLOY / "campaigns" / "synthetic.yaml").read_text())
    assert campaign["datasites"] == [
        "factory-1",
        "factory-2",
        "factory-3",
    ]  # ids; URLs: the registry
    (connector,) = deployments["connector"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])} | {
        e["name"]: e.get("value") for e in connector.get("env", [])
    }
    assert env["PDMFED_DATASITE_REGISTRY"] == "/run/pdmfed/datasites/datasites.json"


def test_no_secret_object_is_shipped_only_referenced(k8s_render):
    for target in OVERLAYS:
        assert not _kinds(load_yaml_docs(k8s_render(target)), "Secret"), target


def test_stateful_workloads_run_one_replica_replaced_by_recreate_and_nothing_scales_them(
    k8s_render,
):
    docs = load_yaml_docs(k8s_render("base"))
    assert not _kinds(docs, "HorizontalPodAutoscaler")
    for name, dep in _kinds(docs, "Deployment").items():
        if name == "redis":
            continue  # keeps nothing: a new pod may start before the old one stops
        assert dep["spec"]["replicas"] == 1, name
        assert dep["spec"]["strategy"] == {"type": "Recreate"}, name
    for name, pvc in _kinds(docs, "PersistentVolumeClaim").items():
        assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"], name


def test_the_replicas_overlay_scales_only_services_whose_state_is_in_postgresql(k8s_render):
    docs = load_yaml_docs(k8s_render("overlays/replicas"))
    deployments = _kinds(docs, "Deployment")
    pvcs = _kinds(docs, "PersistentVolumeClaim")
    replicated = {name for name, dep in deployments.items() if dep["spec"]["replicas"] > 1}
    assert replicated == set(SERVICES)
    for name in SERVICES:
        dep = deployments[name]
        assert dep["spec"]["strategy"]["type"] == "RollingUpdate", name
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        volume, _ = _secrets_mount(pod, container)
        (state,) = [s for s in _secret_sources(volume) if s["name"] == f"pdmfed-{name}-state"]
        assert state["items"] == [{"key": "PDMFED_STATE_URL", "path": "pdmfed_state_url"}]
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}  # fmt: skip
        # no SQLite volume: the only claim is the blob directory every replica mounts
        assert claims == {f"{name}-blobs"}, name
        assert pvcs[f"{name}-blobs"]["spec"]["accessModes"] == ["ReadWriteMany"], name
        assert f"{name}-state" not in pvcs, name
    assert "postgres" in _kinds(docs, "StatefulSet")
    pdbs = {p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
            for p in _kinds(docs, "PodDisruptionBudget").values()}  # fmt: skip
    assert pdbs == replicated  # disruption budgets and autoscalers only for what can scale
    hpas = {
        h["spec"]["scaleTargetRef"]["name"]
        for h in _kinds(docs, "HorizontalPodAutoscaler").values()
    }
    assert hpas and hpas <= replicated
    for name in SERVICES:
        labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "service"}
        assert ("postgres", 5432) in _egress_targets(docs, labels), name


def _secret_refs(pod: dict) -> set[str]:
    """Every Secret a pod spec reads: mounted, as env files, or one key at a time."""
    names = set().union(set(), *(_secret_names(v) for v in pod.get("volumes", [])))
    for container in pod["containers"]:
        names |= {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
        names |= {
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
    return names


def test_in_the_replicas_overlay_each_service_reads_its_own_database_role_and_postgres_the_rest(
    k8s_render,
):
    docs = load_yaml_docs(k8s_render("overlays/replicas"))
    deployments = _kinds(docs, "Deployment")
    for name in SERVICES:
        refs = _secret_refs(deployments[name]["spec"]["template"]["spec"])
        assert {r for r in refs if "state" in r or "postgres" in r} == {f"pdmfed-{name}-state"}
    pod = _kinds(docs, "StatefulSet")["postgres"]["spec"]["template"]["spec"]
    assert _secret_refs(pod) == {"pdmfed-postgres", "pdmfed-postgres-initdb"}
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "initdb"]
    assert mount == {
        "name": "initdb",
        "mountPath": "/docker-entrypoint-initdb.d",
        "readOnly": True,
    }
    (volume,) = [v for v in pod["volumes"] if v["name"] == "initdb"]
    assert volume["secret"] == {"secretName": "pdmfed-postgres-initdb", "defaultMode": 0o444}


def _egress_targets(docs: list[dict], labels: dict[str, str]) -> set[tuple[str, int]]:
    """(target app name, port) pairs the NetworkPolicies let a pod with ``labels`` reach."""
    allowed = set()
    for pol in _kinds(docs, "NetworkPolicy").values():
        sel = pol["spec"]["podSelector"].get("matchLabels", {})
        if not all(labels.get(k) == v for k, v in sel.items()):
            continue
        for rule in pol["spec"].get("egress", []):
            for peer in rule["to"]:
                target = peer.get("podSelector", {}).get("matchLabels", {})
                name = target.get("app.kubernetes.io/name", target.get("k8s-app"))
                for port in rule["ports"]:
                    allowed.add((name, port["port"]))
    return allowed


def test_network_policies_let_services_reach_only_the_broker_and_cache(k8s_render):
    docs = load_yaml_docs(k8s_render("base"))
    assert _kinds(docs, "NetworkPolicy")["default-deny"]["spec"]["podSelector"] == {}
    bus = {("rabbitmq", 5672), ("redis", 6379), ("kube-dns", 53)}
    for name in SERVICES:
        labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "service"}
        extra = {("factory", 8080)} if name == "connector" else set()
        assert _egress_targets(docs, labels) == bus | extra, name
    datasite_ingress = _kinds(docs, "NetworkPolicy")["datasites-from-connector"]["spec"]["ingress"]
    sources = [p["podSelector"]["matchLabels"] for rule in datasite_ingress for p in rule["from"]]
    assert sources == [{"app.kubernetes.io/name": "connector"}]


def test_redis_requires_per_service_acl_users_from_a_secret_and_probes_with_a_ping_only_user(
    k8s_render,
):
    docs = load_yaml_docs(k8s_render("base"))
    pod = _kinds(docs, "Deployment")["redis"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:3] == ["redis-server", "--aclfile", "/etc/redis/users.acl"]
    assert "--requirepass" not in " ".join(container["command"])
    acl = next(v for v in pod["volumes"] if v["name"] == "acl")
    assert acl["secret"]["secretName"] == "pdmfed-redis-acl"
    assert {"name": "acl", "mountPath": "/etc/redis", "readOnly": True} in container["volumeMounts"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert (
            "redis-cli --user pdmfed-health --askpass ping <"
            in container[probe]["exec"]["command"][-1]
        )
    # the campaign Job opens result envelopes: it reaches Redis (as its own ACL user) too
    orchestrator = {
        "app.kubernetes.io/name": "orchestrator",
        "app.kubernetes.io/component": "orchestrator",
    }
    assert ("redis", 6379) in _egress_targets(docs, orchestrator)
    sources = [
        p["podSelector"]["matchLabels"]
        for rule in _kinds(docs, "NetworkPolicy")["redis-ingress"]["spec"]["ingress"]
        for p in rule["from"]
    ]
    assert {"app.kubernetes.io/name": "orchestrator"} in sources


def test_the_operator_overlay_replaces_the_broker_and_keeps_its_service_name(k8s_render):
    docs = load_yaml_docs(k8s_render("overlays/rabbitmq-operator"))
    assert "rabbitmq" not in _kinds(docs, "StatefulSet")
    (cluster,) = _kinds(docs, "RabbitmqCluster").values()
    assert cluster["metadata"]["name"] == "rabbitmq"  # operator's client Service name
    assert "load_definitions" in cluster["spec"]["rabbitmq"]["additionalConfig"]


def test_service_monitors_select_services_that_expose_the_named_port(k8s_render):
    docs = load_yaml_docs(k8s_render("overlays/prometheus-operator"))
    services = _kinds(docs, "Service").values()
    for name, monitor in _kinds(docs, "ServiceMonitor").items():
        want = monitor["spec"]["selector"]["matchLabels"]
        chosen = [s for s in services if want.items() <= s["metadata"]["labels"].items()]
        assert chosen, f"{name} selects no Service"
        for endpoint in monitor["spec"]["endpoints"]:
            for svc in chosen:
                assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}, name
    scraped = {
        s["metadata"]["name"]
        for s in services
        if s["metadata"]["labels"].get("app.kubernetes.io/component") == "service"
    }
    assert scraped == set(SERVICES)


def test_the_campaign_job_validates_and_writes_its_run_folder_to_the_runs_volume(k8s_render):
    validator = require_tool("kubernetes-validate")
    job_file = DEPLOY / "k8s" / "campaign-job.yaml"
    result = run([validator, "--strict", "--quiet", str(job_file)])
    assert result.returncode == 0, result.stdout + result.stderr
    (job,) = load_yaml_docs(job_file.read_text())
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:2] == ["pdmfed", "campaign"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert (
        mounts["runs"] == "/var/lib/pdmfed/runs" and "/var/lib/pdmfed/runs" in container["command"]
    )
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims <= set(_kinds(load_yaml_docs(k8s_render("base")), "PersistentVolumeClaim"))
    assert pod["serviceAccountName"] == "orchestrator"


# Secrets reach a pod as files, never through its environment: /proc/<pid>/environ, every child
# process, crash reports and debug tooling all see the environment.

#: What PDMFED_SECRETS_DIR names in every pdmfed container: its own Secret, mounted read-only.
SECRETS_DIR = "/run/pdmfed/secrets"
#: The datasites as the manifests and docs/deploy.md's `keys init` name them.
K8S_FACTORIES = ("factory-1", "factory-2", "factory-3")


def _workloads(docs: list[dict]) -> dict[str, dict]:
    """Pod spec of every workload rendered in ``docs`` and of the campaign Job ("campaign")."""
    (job,) = load_yaml_docs((DEPLOY / "k8s" / "campaign-job.yaml").read_text())
    pods = {d["metadata"]["name"]: d["spec"]["template"]["spec"]
            for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")}  # fmt: skip
    return pods | {"campaign": job["spec"]["template"]["spec"]}


def _pdmfed_pods(docs: list[dict]) -> dict[str, dict]:
    return {
        name: pod
        for name, pod in _workloads(docs).items()
        if any(c["image"].startswith("pdm-federation") for c in pod["containers"])
    }


def _component(workload: str) -> str:
    """The `pdmfed keys init` directory a workload's secrets come from."""
    if workload == "campaign":
        return "orchestrator"
    return workload if workload in SERVICES else f"factories/{workload}"


def _own_secrets(workload: str, target: str) -> set[str]:
    own = {f"pdmfed-{_component(workload).removeprefix('factories/')}"}
    if target == "overlays/replicas" and workload in SERVICES:
        own.add(f"pdmfed-{workload}-state")  # its own database role, in the same directory
    return own


def _secret_sources(volume: dict) -> list[dict]:
    if "secret" in volume:
        return [{**volume["secret"], "name": volume["secret"]["secretName"]}]
    return [s["secret"] for s in volume.get("projected", {}).get("sources", []) if "secret" in s]


def _mount_of(pod: dict, container: dict, path: str) -> tuple[dict, dict]:
    """(volume, mount) of the mount holding ``path``."""
    (mount,) = [m for m in container.get("volumeMounts", [])
                if path == m["mountPath"] or path.startswith(m["mountPath"] + "/")]  # fmt: skip
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return volume, mount


def _secrets_mount(pod: dict, container: dict) -> tuple[dict, dict]:
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env.get("PDMFED_SECRETS_DIR") == SECRETS_DIR, container["name"]
    volume, mount = _mount_of(pod, container, SECRETS_DIR)
    assert mount["mountPath"] == SECRETS_DIR
    return volume, mount


def _modes(volume: dict) -> set[int]:
    spec = volume.get("secret") or volume["projected"]
    items = [i for s in _secret_sources(volume) for i in s.get("items", [])]
    return {spec.get("defaultMode", 0o644)} | {i["mode"] for i in items if "mode" in i}


def _materialise(volume: dict, secrets: dict[str, dict[str, bytes]], root: Path) -> Path:
    """Write a secret or projected volume as the kubelet does: the files in a timestamped
    directory, `..data` pointing at it and one symlink per top-level name; ``root``."""
    spec = volume.get("secret") or volume["projected"]
    stamp = root / "..2025_01_01_00_00_00.000000001"
    stamp.mkdir(parents=True)
    for source in _secret_sources(volume):
        assert source["name"] in secrets, f"docs/deploy.md never creates {source['name']}"
        data = secrets[source["name"]]
        for item in source.get("items") or [{"key": k, "path": k} for k in data]:
            assert item["key"] in data, f"Secret {source['name']} has no key {item['key']}"
            path = stamp / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[item["key"]])
            path.chmod(item.get("mode", spec.get("defaultMode", 0o644)))
    (root / "..data").symlink_to(stamp.name)
    for top in {p.relative_to(stamp).parts[0] for p in stamp.rglob("*")}:
        (root / top).symlink_to(f"..data/{top}")
    return root


def _documented_k8s_commands() -> str:
    """The shell lines of docs/deploy.md's Kubernetes section that create the namespace and the
    Secrets (its indented code blocks)."""
    section = (ROOT / "docs" / "deploy.md").read_text().split("## On Kubernetes", 1)[1]
    starts = ("kubectl create namespace", "kubectl -n pdmfed create secret", "for ", "done")
    return "\n".join(
        line.strip()
        for line in section.splitlines()
        if line.startswith(" " * 7) and line.strip().startswith(starts)
    )


@pytest.fixture(scope="module")
def documented_secrets(tmp_path_factory) -> tuple[Path, dict[str, dict[str, bytes]]]:
    """A fresh `pdmfed keys init` as docs/deploy.md runs it, and every Secret its kubectl
    commands create from it, built by kubectl itself (client-side dry run): (the keys init
    directory, Secret name -> key -> value)."""
    from federation.cli import main as pdmfed

    kubectl = require_tool("kubectl")
    root = tmp_path_factory.mktemp("k8s-secrets")
    out, created = root / "secrets", root / "created"
    factories = [arg for f in K8S_FACTORIES for arg in ("--factory", f)]
    code = pdmfed(["keys", "init", "--out", str(out), *factories, "--env-files",
                   "--rabbitmq-definitions", str(DEPLOY / "rabbitmq" / "definitions.json"),
                   "--state-url", "postgresql://postgres:5432/pdmfed"])  # fmt: skip
    assert code == 0
    created.mkdir()
    commands = _documented_k8s_commands()
    assert "create secret" in commands
    shim = (
        'kubectl() { n=$((n + 1)); "$KUBECTL" "$@" --dry-run=client -o json > "$CREATED/$n.json"; }'
    )
    env = {"PATH": os.environ["PATH"], "HOME": str(root), "S": str(out), "KUBECTL": kubectl,
           "CREATED": str(created), "n": "0"}  # fmt: skip
    result = run(["bash", "-euo", "pipefail", "-c", f"{shim}\n{commands}"], env=env)
    assert result.returncode == 0, result.stderr
    secrets = {}
    for path in created.glob("*.json"):
        obj = json.loads(path.read_text())
        if obj["kind"] == "Secret":
            data = obj.get("data", {})
            secrets[obj["metadata"]["name"]] = {k: base64.b64decode(v) for k, v in data.items()}
    return out, secrets


@pytest.mark.parametrize("target", OVERLAYS)
def test_no_container_takes_a_secret_through_its_environment(target, k8s_render):
    for name, pod in _workloads(load_yaml_docs(k8s_render(target))).items():
        for container in pod["containers"] + pod.get("initContainers", []):
            where = (target, name, container["name"])
            assert not [e for e in container.get("envFrom", []) if "secretRef" in e], where
            env = container.get("env", [])
            assert not [e for e in env if "secretKeyRef" in e.get("valueFrom", {})], where
            assert "$(PDMFED_" not in " ".join(container.get("command", [])), where


@pytest.mark.parametrize("target", ["base", "overlays/replicas"])
def test_each_pdmfed_container_reads_only_its_own_secret_from_a_read_only_group_only_mount(
    target, k8s_render
):
    pods = _pdmfed_pods(load_yaml_docs(k8s_render(target)))
    assert set(pods) == {*SERVICES, *K8S_FACTORIES, "campaign"}
    for name, pod in pods.items():
        (container,) = pod["containers"]
        volume, mount = _secrets_mount(pod, container)
        assert mount.get("readOnly") is True, name
        assert {s["name"] for s in _secret_sources(volume)} == _own_secrets(name, target), name
        # files root:fsGroup, no write bit, nothing for others: only this pod's user reads them
        assert _modes(volume) <= {0o400, 0o440}, name
        context = pod["securityContext"]
        assert context["runAsNonRoot"] and context["fsGroup"] == context["runAsGroup"], name


def test_the_docs_create_every_secret_the_workloads_mount(k8s_render, documented_secrets):
    _, secrets = documented_secrets
    for target in OVERLAYS:
        pods = _workloads(load_yaml_docs(k8s_render(target))).values()
        referenced = set().union(*(_secret_refs(pod) for pod in pods))
        assert referenced <= set(secrets), (target, referenced - set(secrets))


@pytest.mark.parametrize("target", ["base", "overlays/replicas"])
def test_each_pdmfed_pod_sees_every_secret_of_its_component_from_files_alone(
    target, k8s_render, documented_secrets, tmp_path, monkeypatch
):
    from federation.config import Settings

    out, secrets = documented_secrets
    for name, pod in _pdmfed_pods(load_yaml_docs(k8s_render(target))).items():
        (container,) = pod["containers"]
        volume, _ = _secrets_mount(pod, container)
        mounted = _materialise(volume, secrets, tmp_path / name)
        component = out / _component(name)
        expected = {f.name: f.read_text() for f in (component / "secrets").iterdir()}
        if target == "overlays/replicas" and name in SERVICES:
            line = (component / "state.env").read_text().strip()
            expected["pdmfed_state_url"] = line.removeprefix("PDMFED_STATE_URL=")
        # exactly its own component's secrets, one file per setting
        assert {p.name for p in mounted.iterdir() if not p.name.startswith("..")} == set(
            expected
        ), name
        with monkeypatch.context() as env:
            for key in [k for k in os.environ if k.startswith("PDMFED_")]:
                env.delenv(key)
            env.setenv("PDMFED_SECRETS_DIR", str(mounted))
            settings = Settings()
            for file_name, value in expected.items():
                got = getattr(settings, file_name.removeprefix("pdmfed_"))
                got = got.get_secret_value() if isinstance(got, SecretStr) else got
                assert got == value, (name, file_name)
            if _component(name) in (*SERVICES, "orchestrator"):
                settings.validate_secrets()


def test_redis_probes_and_postgres_read_their_passwords_from_their_own_mounted_files(
    k8s_render, documented_secrets, tmp_path
):
    out, secrets = documented_secrets
    pods = _workloads(load_yaml_docs(k8s_render("overlays/replicas")))
    pod = pods["redis"]
    (container,) = pod["containers"]
    health = (out / "redis" / "secrets" / "rediscli_auth").read_text()
    for probe in ("livenessProbe", "readinessProbe"):
        # redis-cli reads the password on stdin: in no process's environment or command line
        script = container[probe]["exec"]["command"][-1]
        (path,) = re.findall(r"--askpass ping < (\S+)", script)
        volume, mount = _mount_of(pod, container, path)
        assert mount.get("readOnly") is True and _modes(volume) <= {0o400, 0o440}
        root = _materialise(volume, secrets, tmp_path / probe)
        assert (root / os.path.relpath(path, mount["mountPath"])).read_text() == health
    pod = pods["postgres"]
    (container,) = pod["containers"]
    path = {e["name"]: e.get("value") for e in container["env"]}["POSTGRES_PASSWORD_FILE"]
    volume, mount = _mount_of(pod, container, path)
    assert mount.get("readOnly") is True and _modes(volume) <= {0o400, 0o440}
    root = _materialise(volume, secrets, tmp_path / "postgres")
    superuser = dict(ln.split("=", 1) for ln in (out / "postgres" / "env").read_text().splitlines())
    assert (root / os.path.relpath(path, mount["mountPath"])).read_text() == superuser[
        "POSTGRES_PASSWORD"
    ]
