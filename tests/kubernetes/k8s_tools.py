#!/usr/bin/env python3
"""Independent Kubernetes checks the Rust tests in tests/tests/kubernetes.rs
run: the official schemas (kubernetes-validate), a CRD's own schema
(jsonschema), JSON Patch (jsonpatch) and a security scan (checkov).

    k8s_tools.py versions                 the versions checked: 1.29 and the newest known
    k8s_tools.py validate FILE...         every object, for each version, strictly
    k8s_tools.py crd-schema CRD FILE...   every SegmentationPolicy against the CRD's schema
    k8s_tools.py patch                    stdin {"object", "patch"}: prints the patched object
    k8s_tools.py checkov DIR              checkov's Kubernetes checks

Exit 0 when every check passes, 1 otherwise; each failure is printed.
"""
import json
import subprocess
import sys

import yaml


def versions():
    import kubernetes_validate

    return ["1.29.0", kubernetes_validate.latest_version()]


def documents(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def validate(paths):
    import kubernetes_validate

    failures = 0
    for version in versions():
        for path in paths:
            for doc in documents(path):
                what = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')} on {version}"
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                    print(f"ok {what}")
                except kubernetes_validate.ValidationError as e:
                    failures += 1
                    print(f"FAIL {what}: {e.message} at {list(e.path)}")
                except kubernetes_validate.SchemaNotFoundError:
                    failures += 1
                    print(f"FAIL {what}: no schema for this kind")
    return failures


def strict(node):
    """The CRD schema as the API server applies it with strict field
    validation (kubectl's default): unknown fields are errors, `nullable`
    allows null, int-or-string takes either."""
    if not isinstance(node, dict):
        return node
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("nullable"):
        out["type"] = [node["type"], "null"]
    out.pop("nullable", None)
    if "properties" in node:
        out["properties"] = {k: strict(v) for k, v in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            out[key] = strict(node[key])
    return out


def crd_schema(crd_path, paths):
    import jsonschema

    (crd,) = documents(crd_path)
    kind = crd["spec"]["names"]["kind"]
    group = crd["spec"]["group"]
    failures, checked = 0, 0
    for version in crd["spec"]["versions"]:
        schema = strict(version["schema"]["openAPIV3Schema"])
        validator = jsonschema.Draft7Validator(schema)
        api_version = f"{group}/{version['name']}"
        for path in paths:
            for doc in documents(path):
                if doc.get("kind") != kind or doc.get("apiVersion") != api_version:
                    continue
                checked += 1
                name = doc.get("metadata", {}).get("name")
                errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
                for e in errors:
                    print(f"FAIL {path}: {name}: {e.message} at {list(e.path)}")
                if errors:
                    failures += 1
                else:
                    print(f"ok {path}: {name}")
    print(f"{checked} policies checked")
    return failures if checked else 1


def patch():
    import base64

    import jsonpatch

    req = json.load(sys.stdin)
    ops = json.loads(base64.b64decode(req["patch"]))
    print(json.dumps(jsonpatch.JsonPatch(ops).apply(req["object"])))
    return 0


def checkov(directory):
    run = subprocess.run(
        ["checkov", "-d", directory, "--framework", "kubernetes", "--skip-download",
         "--quiet", "--compact", "--output", "json"],
        capture_output=True, text=True,
    )
    report = json.loads(run.stdout)
    summary = report["summary"]
    for check in report["results"]["failed_checks"]:
        print(f"FAIL {check['check_id']} {check['check_name']}: {check['resource']} in {check['file_path']}")
    print(f"checkov: {summary['passed']} passed, {summary['failed']} failed, {summary['skipped']} skipped")
    if summary["parsing_errors"] or not summary["passed"]:
        return 1
    return summary["failed"]


def main(args):
    cmd = args[0]
    if cmd == "versions":
        print(" ".join(versions()))
        return 0
    if cmd == "validate":
        return validate(args[1:])
    if cmd == "crd-schema":
        return crd_schema(args[1], args[2:])
    if cmd == "patch":
        return patch()
    if cmd == "checkov":
        return checkov(args[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1:]) else 0)
