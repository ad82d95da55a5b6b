"""Every KubeRay manifest against its CRD's openAPIV3Schema, unknown fields rejected (issue 21 item 6).

Kubernetes prunes a field a structural CRD schema does not define, silently: a misspelt or invented key in a
manifest would be dropped on apply. So the schemas are made strict here (``additionalProperties: false`` wherever
the CRD lists ``properties`` and does not preserve unknown fields) before validating."""
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO.parent / "shared" / "schemas" / "kuberay"
MANIFESTS = sorted((REPO / "manifests").glob("*.yaml"))


def strict(schema: dict) -> dict:
    """A copy of an OpenAPI v3 schema in which objects accept only the properties they list."""
    if not isinstance(schema, dict):
        return schema
    out = {k: ([strict(s) for s in v] if isinstance(v, list) else strict(v) if isinstance(v, dict) else v)
           for k, v in schema.items() if k != "properties"}
    if "properties" in schema:
        out["properties"] = {name: strict(s) for name, s in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


def crd_schemas() -> dict:
    """(apiVersion, kind) -> the strict schema of that served version."""
    if not CRDS.is_dir():
        pytest.fail(f"the KubeRay CRDs are not at {CRDS} (../shared/schemas/kuberay beside the checkout)")
    found = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)  # 4 x ~13,000 lines: the C parser
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            found[key] = strict(version["schema"]["openAPIV3Schema"])
    return found


SCHEMAS = crd_schemas() if CRDS.is_dir() else {}


def documents():
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion", "").startswith("ray.io/"):
                yield pytest.param(doc, id=f"{path.name}:{doc['kind']}")


def violations(doc: dict) -> list[str]:
    schema = SCHEMAS[(doc["apiVersion"], doc["kind"])]
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in jsonschema.Draft4Validator(schema).iter_errors(doc)]


def test_every_kuberay_kind_of_the_manifests_has_its_crd():
    kinds = {(d.values[0]["apiVersion"], d.values[0]["kind"]) for d in documents()}
    assert kinds == {("ray.io/v1", "RayJob"), ("ray.io/v1", "RayCronJob"), ("ray.io/v1", "RayService")}
    assert kinds <= set(SCHEMAS)


@pytest.mark.parametrize("doc", list(documents()))
def test_manifest_validates_against_its_crd_with_unknown_fields_rejected(doc):
    assert violations(doc) == []


def test_the_strict_schema_catches_what_kubernetes_would_prune():
    """The check can fail: the field the nightly schedule once carried, and a misspelt one deep in a pod spec."""
    (schedule,) = [d.values[0] for d in documents() if d.values[0]["kind"] == "RayCronJob"]
    bad = yaml.safe_load(yaml.safe_dump(schedule))
    bad["spec"]["concurrencyPolicy"] = "Forbid"
    bad["spec"]["jobTemplate"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imag"] = "x"
    found = violations(bad)
    assert any(v.startswith("spec:") and "'concurrencyPolicy' was unexpected" in v for v in found), found
    assert any("containers.0" in v and "'imag' was unexpected" in v for v in found), found


def ray_cluster(doc: dict) -> dict:
    spec = doc["spec"]
    return {"RayJob": lambda: spec["rayClusterSpec"], "RayCronJob": lambda: spec["jobTemplate"]["rayClusterSpec"],
            "RayService": lambda: spec["rayClusterConfig"]}[doc["kind"]]()


@pytest.mark.parametrize("doc", list(documents()))
def test_token_auth_is_on_and_only_the_serve_port_is_open_to_outside(doc):
    """The job server runs whatever code a caller submits: a token guards it, and a network policy keeps everything
    but the Serve port (RayService only) unreachable from outside the cluster."""
    cluster = ray_cluster(doc)
    assert cluster["authOptions"] == {"mode": "token"}
    policy = cluster["networkPolicy"]
    assert policy["mode"] in ("DenyAll", "DenyAllIngress")
    open_ports = set()
    for side in ("head", "worker"):
        for rule in policy.get(side, {}).get("ingressRules", []):
            outside = any(p.get("ipBlock", {}).get("cidr") == "0.0.0.0/0" or p.get("namespaceSelector") == {}
                          for p in rule["from"])
            ports = {p["port"] for p in rule["ports"]}
            if outside:
                open_ports |= ports
            else:  # the operator's namespace only
                assert ports == {8265} and rule["from"][0]["namespaceSelector"]["matchLabels"], rule
    assert open_ports == ({8000} if doc["kind"] == "RayService" else set())


def test_pods_reach_s3_by_their_service_account_with_static_keys_optional():
    for param in documents():
        cluster = ray_cluster(param.values[0])
        for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
            pod = group["template"]["spec"]
            assert pod["serviceAccountName"] == "reasonrec"
            for container in pod["containers"]:
                assert container["envFrom"] == [{"secretRef": {"name": "reasonrec-s3", "optional": True}}]
    (account,) = yaml.safe_load_all((REPO / "manifests" / "service-account.yaml").read_text())
    assert account["kind"] == "ServiceAccount" and account["metadata"]["name"] == "reasonrec"
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
