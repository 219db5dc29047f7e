"""deploy/k8s: kustomize renders, kubernetes-validate --strict, CRDs, and policy wiring."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml
from deploy_helpers import DEPLOY, SERVICES, load_yaml_docs, require_tool, run

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
        # its secrets from its own Secret only
        secrets = [e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e]
        assert secrets == [f"pdmfed-{name}"]
        assert not any("valueFrom" in e for e in container["env"])


def _secret_names(volume: dict) -> set[str]:
    if "secret" in volume:
        return {volume["secret"]["secretName"]}
    return {
        s["secret"]["name"] for s in volume.get("projected", {}).get("sources", []) if "secret" in s
    }


def test_each_pod_mounts_only_its_own_keys(k8s_render):
    docs = load_yaml_docs(k8s_render("base"))
    deployments = _kinds(docs, "Deployment")
    for name in SERVICES:
        volumes = deployments[name]["spec"]["template"]["spec"]["volumes"]
        mounted = set().union(*(_secret_names(v) for v in volumes))
        expected = {f"pdmfed-{name}-keys"} | (
            {"pdmfed-factory-public-keys"} if name == "security" else set()
        )
        expected |= {"pdmfed-connector-datasites"} if name == "connector" else set()
        assert mounted == expected, name
    for i in (1, 2, 3):
        pod = deployments[f"factory-{i}"]["spec"]["template"]["spec"]
        mounted = set().union(*(_secret_names(v) for v in pod["volumes"]))
        assert mounted == {f"pdmfed-factory-{i}-keys"}
        (container,) = pod["containers"]
        assert [e["secretRef"]["name"] for e in container["envFrom"]] == [f"pdmfed-factory-{i}"]


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
        env = {e["name"]: e for e in container["env"]}
        assert (
            env["PDMFED_STATE_URL"]["valueFrom"]["secretKeyRef"]["name"] == f"pdmfed-{name}-state"
        )
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
        assert "redis-cli --user pdmfed-health ping" in container[probe]["exec"]["command"][-1]
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
