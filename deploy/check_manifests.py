"""Offline checks behind deploy/check.sh (run with the venv's Python).

  check_manifests.py k8s RENDERED.yaml...       every object against the Kubernetes schemas
                                                 (kubernetes-validate), or against the schema in
                                                 k8s/schemas/ for custom resources; an object of a
                                                 kind with neither fails
  check_manifests.py nats-values BASE.yaml [OVERLAY.yaml]
                                                 the merged Helm values against their schema
  check_manifests.py alerts FILE.yaml            Prometheus rule groups, structurally (used when
                                                 promtool is not installed)
  check_manifests.py dashboard FILE.json         the Grafana dashboard's panels and queries
  check_manifests.py dashboard-rules FILE.json OUT.yaml
                                                 writes the dashboard's queries (variables
                                                 filled in) as recording rules, for promtool

Exits 1 on the first file with a failure, after printing every failure in that file.
"""

import json
import pathlib
import re
import sys

import jsonschema
import kubernetes_validate
import yaml

HERE = pathlib.Path(__file__).resolve().parent
SCHEMAS = HERE / "k8s" / "schemas"
# Kubernetes versions checked: the oldest this project supports (native gRPC probes are GA
# from 1.27) and a current one.
K8S_VERSIONS = ["1.29.0", "1.34.0"]


def crd_schema(api_version, kind):
    path = SCHEMAS / f"{api_version.replace('/', '_')}_{kind}.json"
    return json.loads(path.read_text()) if path.exists() else None


def describe(error):
    where = "/".join(str(p) for p in error.absolute_path) or "(top)"
    return f"{where}: {error.message}"


def check_k8s(paths):
    failures = []
    count = 0
    for path in paths:
        for doc in yaml.safe_load_all(pathlib.Path(path).read_text()):
            if not doc:
                continue
            count += 1
            api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
            name = f"{path}: {kind} {doc.get('metadata', {}).get('name')}"
            schema = crd_schema(api, kind)
            if schema is not None:
                validator = jsonschema.Draft202012Validator(schema)
                for error in sorted(validator.iter_errors(doc), key=str):
                    failures.append(f"{name}: {describe(error)}")
                continue
            for version in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.SchemaNotFoundError:
                    failures.append(f"{name}: no schema for {api} {kind} (add one to {SCHEMAS})")
                    break
                except kubernetes_validate.ValidationError as error:
                    failures.append(f"{name} (Kubernetes {version}): {describe(error)}")
                except Exception as error:  # a schema the validator cannot read
                    failures.append(f"{name} (Kubernetes {version}): {error}")
    return count, failures


def merge(base, overlay):
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def check_nats_values(paths):
    values = {}
    for path in paths:
        values = merge(values, yaml.safe_load(pathlib.Path(path).read_text()) or {})
    schema = json.loads((SCHEMAS / "nats-values.schema.json").read_text())
    failures = [describe(e) for e in jsonschema.Draft202012Validator(schema).iter_errors(values)]
    return 1, failures


DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def balanced(expr):
    depth = 0
    for char in expr:
        depth += {"(": 1, ")": -1, "{": 1, "}": -1, "[": 1, "]": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def check_alerts(path):
    doc = yaml.safe_load(pathlib.Path(path).read_text())
    failures = []
    groups = doc.get("groups") if isinstance(doc, dict) else None
    if not isinstance(groups, list) or not groups:
        return 0, ["no `groups` list"]
    count = 0
    names = set()
    for group in groups:
        gname = group.get("name")
        if not gname or gname in names:
            failures.append(f"group {gname!r}: missing or repeated name")
        names.add(gname)
        if "interval" in group and not DURATION.match(str(group["interval"])):
            failures.append(f"group {gname}: bad interval {group['interval']!r}")
        for rule in group.get("rules") or []:
            count += 1
            label = rule.get("alert") or rule.get("record")
            if bool(rule.get("alert")) == bool(rule.get("record")):
                failures.append(f"{gname}/{label}: a rule has exactly one of alert, record")
            unknown = set(rule) - {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
            if unknown:
                failures.append(f"{gname}/{label}: unknown keys {sorted(unknown)}")
            expr = rule.get("expr")
            if not isinstance(expr, str) or not expr.strip() or not balanced(expr):
                failures.append(f"{gname}/{label}: expr missing or unbalanced")
            if "for" in rule and not DURATION.match(str(rule["for"])):
                failures.append(f"{gname}/{label}: bad for {rule['for']!r}")
            if rule.get("alert"):
                if (rule.get("labels") or {}).get("severity") not in ("critical", "warning", "info"):
                    failures.append(f"{gname}/{label}: labels.severity must be critical, warning or info")
                if not (rule.get("annotations") or {}).get("summary"):
                    failures.append(f"{gname}/{label}: annotations.summary missing")
    return count, failures


def check_dashboard(path):
    doc = json.loads(pathlib.Path(path).read_text())
    failures = []
    for key in ("title", "uid", "panels", "schemaVersion"):
        if key not in doc:
            failures.append(f"missing {key}")
    ids = set()
    count = 0
    for panel in doc.get("panels", []):
        count += 1
        pid = panel.get("id")
        if pid in ids:
            failures.append(f"panel id {pid} repeated")
        ids.add(pid)
        if panel.get("type") == "row":
            continue
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in ("x", "y", "w", "h")):
            failures.append(f"panel {pid} {panel.get('title')!r}: gridPos needs integer x, y, w, h")
        targets = panel.get("targets") or []
        if not targets:
            failures.append(f"panel {pid} {panel.get('title')!r}: no targets")
        for target in targets:
            expr = target.get("expr", "")
            if not expr or not balanced(expr) or "leads_" not in expr:
                failures.append(f"panel {pid} {panel.get('title')!r}: bad expr {expr!r}")
    return count, failures


def dashboard_rules(path, out):
    doc = json.loads(pathlib.Path(path).read_text())
    rules = []
    for panel in doc.get("panels", []):
        for target in panel.get("targets") or []:
            expr = target["expr"].replace("$__rate_interval", "5m").replace("$service", ".*")
            rules.append({"record": f"dashboard:panel_{panel['id']}:{target['refId'].lower()}", "expr": expr})
    pathlib.Path(out).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return len(rules), []


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    what, paths = argv[1], argv[2:]
    if what == "k8s":
        count, failures = check_k8s(paths)
    elif what == "nats-values":
        count, failures = check_nats_values(paths)
    elif what == "alerts":
        count, failures = check_alerts(paths[0])
    elif what == "dashboard":
        count, failures = check_dashboard(paths[0])
    elif what == "dashboard-rules":
        count, failures = dashboard_rules(paths[0], paths[1])
    else:
        print(f"unknown check {what}", file=sys.stderr)
        return 2
    for failure in failures:
        print(f"  FAIL {failure}", file=sys.stderr)
    if failures:
        return 1
    print(f"  ok: {what} {' '.join(paths)} ({count} checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
