"""The chart's serving.knative.dev/v1 CRDs: generated, structural, and strict enough.

The Knative sample manifests in samples/knative/ must validate against the CRDs' OpenAPI v3
schemas, and every file in samples/knative/invalid/ must be rejected with the error its
`# expect: PATH: MESSAGE` line names. No API server runs here, so the schemas are checked
with `jsonschema`, reading them the way the API server does with strict field validation
(`kubectl apply --validate=strict`): an object field the schema does not name is an error.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "helm" / "ebb" / "crds"
SAMPLES = REPO / "samples" / "knative"
GROUP = "serving.knative.dev"
KINDS = {
    "Service": "services",
    "Configuration": "configurations",
    "Revision": "revisions",
    "Route": "routes",
}


def _load_crdgen():
    spec = importlib.util.spec_from_file_location("crdgen", REPO / "helm" / "crdgen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _crds() -> dict[str, dict[str, Any]]:
    """Kind -> CRD object, read from helm/ebb/crds/."""
    out = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        out[crd["spec"]["names"]["kind"]] = crd
    return out


CRDS = _crds()


def _schema(kind: str) -> dict[str, Any]:
    (version,) = CRDS[kind]["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


# --- the files are what the generator writes --------------------------------------------


def test_crd_files_are_fresh():
    crdgen = _load_crdgen()
    expected = crdgen.render_all()
    actual = {p.name: p.read_text() for p in CRD_DIR.glob("*.yaml")}
    assert actual == expected, "helm/ebb/crds is stale: run `python helm/crdgen.py`"


# --- shape of the CRDs -------------------------------------------------------------------


@pytest.mark.parametrize("kind,plural", sorted(KINDS.items()))
def test_crd_names_scope_and_status_subresource(kind, plural):
    crd = CRDS[kind]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{plural}.{GROUP}"
    spec = crd["spec"]
    assert spec["group"] == GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["plural"] == plural
    assert spec["names"]["singular"] == kind.lower()
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
    assert version["subresources"] == {"status": {}}
    labels = crd["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "ebb"
    assert labels["app.kubernetes.io/part-of"] == "ebb"
    assert labels["app.kubernetes.io/component"] == "crd"


def test_short_names_are_knatives():
    assert CRDS["Service"]["spec"]["names"]["shortNames"] == ["kservice", "ksvc"]
    assert CRDS["Configuration"]["spec"]["names"]["shortNames"] == ["config", "cfg"]
    assert CRDS["Revision"]["spec"]["names"]["shortNames"] == ["rev"]
    assert CRDS["Route"]["spec"]["names"]["shortNames"] == ["rt"]


READY = ".status.conditions[?(@.type=='Ready')].status"
REASON = ".status.conditions[?(@.type=='Ready')].reason"


@pytest.mark.parametrize(
    "kind,columns",
    [
        (
            "Service",
            {
                "URL": ".status.url",
                "LatestCreated": ".status.latestCreatedRevisionName",
                "LatestReady": ".status.latestReadyRevisionName",
                "Ready": READY,
                "Reason": REASON,
            },
        ),
        (
            "Configuration",
            {
                "LatestCreated": ".status.latestCreatedRevisionName",
                "LatestReady": ".status.latestReadyRevisionName",
                "Ready": READY,
                "Reason": REASON,
            },
        ),
        (
            "Revision",
            {
                "Config Name": ".metadata.labels['serving\\.knative\\.dev/configuration']",
                "Generation": ".metadata.labels['serving\\.knative\\.dev/configurationGeneration']",
                "Ready": READY,
                "Reason": REASON,
                "Actual Replicas": ".status.actualReplicas",
                "Desired Replicas": ".status.desiredReplicas",
            },
        ),
        ("Route", {"URL": ".status.url", "Ready": READY, "Reason": REASON}),
    ],
)
def test_printer_columns_like_knative(kind, columns):
    (version,) = CRDS[kind]["spec"]["versions"]
    assert {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]} == columns


# --- structural schemas (what the API server requires of apiextensions/v1) ---------------

_FORBIDDEN = {
    "$ref",
    "$schema",
    "$id",
    "id",
    "definitions",
    "dependencies",
    "patternProperties",
    "additionalItems",
}
_TYPES = {"object", "array", "string", "integer", "number", "boolean"}
_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def structural_problems(node: Any, path: str = "") -> list[str]:
    """Violations of Kubernetes' structural-schema rules under `node` (empty = structural)."""
    if not isinstance(node, dict):
        return [f"{path}: not a schema object"]
    problems = [f"{path}: {key} is not allowed" for key in _FORBIDDEN & node.keys()]
    if node.get("uniqueItems") is True:
        problems.append(f"{path}: uniqueItems: true is not allowed")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties are mutually exclusive")
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if int_or_string:
        if "type" in node or node.get("anyOf") != _INT_OR_STRING:
            problems.append(f"{path}: int-or-string must be typeless with anyOf integer|string")
    elif not preserve and node.get("type") not in _TYPES:
        problems.append(f"{path}: no valid type ({node.get('type')!r})")
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node and not (int_or_string and key == "anyOf"):
            problems.append(f"{path}: {key} is only used for int-or-string here")
    if "items" in node:
        problems += structural_problems(node["items"], f"{path}[]")
    for name, child in node.get("properties", {}).items():
        problems += structural_problems(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_problems(node["additionalProperties"], f"{path}.*")
    return problems


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_schemas_are_structural(kind):
    schema = _schema(kind)
    assert structural_problems(schema) == []
    # Root metadata may only be `type: object` (the API server owns its schema).
    assert schema["properties"]["metadata"] == {"type": "object"}
    assert schema["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True


def test_structural_check_catches_violations():
    assert structural_problems(
        {"type": "object", "properties": {"a": {"description": "untyped"}}}
    ) == [".a: no valid type (None)"]
    assert structural_problems(
        {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}}
    )
    assert structural_problems({"type": "array", "items": {"$ref": "#/x"}})


@pytest.mark.parametrize("kind", ["Service", "Configuration", "Revision"])
def test_revision_limits_are_in_the_schema(kind):
    spec = _schema(kind)["properties"]["spec"]
    pod = spec if kind == "Revision" else spec["properties"]["template"]["properties"]["spec"]
    props = pod["properties"]
    assert (props["containerConcurrency"]["minimum"], props["containerConcurrency"]["maximum"]) == (
        0,
        1000,
    )
    assert (props["timeoutSeconds"]["minimum"], props["timeoutSeconds"]["maximum"]) == (0, 600)
    assert pod["required"] == ["containers"]
    assert props["containers"]["minItems"] == 1
    container = props["containers"]["items"]["properties"]
    for field in (
        "image",
        "command",
        "args",
        "env",
        "envFrom",
        "ports",
        "resources",
        "readinessProbe",
        "livenessProbe",
        "volumeMounts",
    ):
        assert field in container, field
    assert container["ports"]["maxItems"] == 1


@pytest.mark.parametrize("kind", ["Service", "Route"])
def test_traffic_target_schema(kind):
    target = _schema(kind)["properties"]["spec"]["properties"]["traffic"]["items"]["properties"]
    assert set(target) == {"tag", "revisionName", "configurationName", "latestRevision", "percent"}
    assert (target["percent"]["minimum"], target["percent"]["maximum"]) == (0, 100)
    assert target["latestRevision"]["type"] == "boolean"


# --- Knative samples against the schemas ---------------------------------------------------


def strict_json_schema(node: Any) -> Any:
    """An OpenAPI v3 CRD schema as JSON Schema, with unknown fields rejected the way strict
    field validation rejects them (objects with `properties` and no
    x-kubernetes-preserve-unknown-fields admit no other field)."""
    if isinstance(node, list):
        return [strict_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if node.get("properties", {}).get("metadata") == {"type": "object"}:
        # Root metadata is ObjectMeta, validated by the API server itself.
        out["properties"]["metadata"] = {"type": "object"}
    return out


VALIDATORS = {kind: jsonschema.Draft7Validator(strict_json_schema(_schema(kind))) for kind in KINDS}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _errors(doc: dict[str, Any]) -> list[tuple[str, str]]:
    assert doc["apiVersion"] == f"{GROUP}/v1"
    return sorted(
        (".".join(str(p) for p in err.absolute_path), err.message)
        for err in VALIDATORS[doc["kind"]].iter_errors(doc)
    )


VALID = sorted(SAMPLES.glob("*.yaml"))
INVALID = sorted((SAMPLES / "invalid").glob("*.yaml"))


def test_there_are_samples_of_every_kind():
    kinds = {doc["kind"] for path in VALID for doc in _documents(path)}
    assert kinds == set(KINDS)
    assert len(INVALID) >= 8


@pytest.mark.parametrize("path", VALID, ids=[p.name for p in VALID])
def test_valid_samples_are_accepted(path):
    for doc in _documents(path):
        assert _errors(doc) == [], f"{path.name}: {doc['kind']}/{doc['metadata']['name']}"


_EXPECT = re.compile(r"^# expect: (?P<path>[^:]*): (?P<message>.+)$", re.M)


@pytest.mark.parametrize("path", INVALID, ids=[p.name for p in INVALID])
def test_invalid_samples_are_rejected_with_the_expected_error(path):
    text = path.read_text()
    expect = _EXPECT.search(text)
    assert expect, f"{path.name} lacks an `# expect: PATH: MESSAGE` line"
    (doc,) = _documents(path)
    errors = _errors(doc)
    assert errors, f"{path.name} was accepted"
    assert any(
        where == expect["path"] and expect["message"] in message for where, message in errors
    ), f"{path.name}: expected {expect['path']}: {expect['message']}; got {errors}"
