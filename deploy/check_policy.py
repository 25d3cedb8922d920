"""The security rules every shipped deployment keeps, checked offline by deploy/check.sh (run
with its venv's Python). Closed by default: every service verifies tokens, none is told to
switch authentication off; only the migrate Job holds the admin database connection; each
service connects to Postgres and NATS with credentials of its own, from a secret only it
mounts; the console holds none of these (its client certificate alone), is probed over HTTP,
reached from its namespace and reaches only the services it calls; notifications, which
delivers webhooks, reaches the internet on 80 and 443 but never the private ranges; production
encrypts what leaves a pod and serves the console over TLS; no secret value is in the
repository.

  check_policy.py compose RENDERED.json
        `docker compose config --format json` of deploy/compose.yaml
  check_policy.py k8s NAME RENDERED.yaml SECRETS.yaml [--tls]
        an overlay rendered by kustomize; SECRETS.yaml is `install-secrets.sh --print`, which
        must produce every Secret and key the overlay reads; --tls: the overlay must encrypt
        gRPC, NATS and Postgres
  check_policy.py nats SECRETS.yaml [--tls] VALUES.yaml...
        the NATS chart's values merged in order: the platform's users, their passwords from
        the installer's Secret, TLS with --tls
  check_policy.py literals PATH...
        no private key, certificate, password or credentialed URL written in these files
  check_policy.py selftest RENDERED.json LOCAL.yaml PRODUCTION.yaml SECRETS.yaml
        breaks the rendered deployments in the ways the rules forbid, one at a time, and fails
        unless every break is caught

Each prints its failures and exits 1 when there is one.
"""

import copy
import ipaddress
import json
import pathlib
import re
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent
NATS_CONF = HERE / "nats" / "nats-server.conf"

# Every service the deployments must run, with its gRPC port.
SERVICES = {
    "ingest": 50051,
    "lead": 50052,
    "qualification": 50053,
    "assignment": 50054,
    "followup": 50055,
    "broadcast": 50056,
    "people": 50057,
    "notifications": 50058,
}
# Secrets holding the Postgres superuser's credentials (ours, CloudNativePG's default, the
# name of earlier versions).
ADMIN_SECRETS = {"leads-postgres-admin", "leads-pg-superuser", "leads-db"}
# Secrets made by someone else than the installer: the backup bucket's keys (the operator),
# the database's CA (CloudNativePG).
EXTERNAL_SECRETS = {"leads-pg-backup", "leads-pg-ca"}

# The console: its HTTP port, the services it calls (every one but ingest) and the one Secret
# it may read, its client certificate. It holds no token key, no database or NATS credential.
CONSOLE_PORT = 8080
CONSOLE_CALLS = {service: port for service, port in SERVICES.items() if service != "ingest"}
CONSOLE_SECRET = "leads-console-tls"

# The service that delivers webhooks to URLs organisations choose: it may reach public
# addresses on these ports, and never these ranges (private networks, where the cluster's pods
# and Services live; link-local, the cloud's metadata service; shared address space, some
# clusters' and clouds'), whatever the URL says. Loopback never leaves the pod, so no policy
# governs it.
WEBHOOK_SENDER = "notifications"
WEBHOOK_PORTS = {("TCP", 80), ("TCP", 443)}
PRIVATE_RANGES = [
    ipaddress.ip_network(cidr)
    for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10",
                 "fc00::/7", "fe80::/10")
]

SECRETISH = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|API_KEY|PRIVATE_KEY)", re.IGNORECASE)
CREDENTIALED_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^/@\s:]*:([^@\s/]*)@", re.IGNORECASE)
REFERENCE = re.compile(r"^(\$\([A-Za-z_][A-Za-z0-9_]*\)|\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*|<secret:[^>]*>)$")


def is_file_setting(name):
    return name.endswith(("_FILE", "_FILES", "FILE"))


def literal_secret(name, value):
    """Why an environment variable with this literal value gives a secret away, or None."""
    if value in (None, ""):
        return None
    value = str(value)
    if SECRETISH.search(name) and not is_file_setting(name) and not REFERENCE.match(value):
        return f"{name} holds a literal secret"
    match = CREDENTIALED_URL.search(value)
    if match and match.group(1) and not REFERENCE.match(match.group(1)):
        return f"{name} holds a URL with a literal password"
    return None


def nats_users(text=None):
    """The users of a NATS configuration's text (deploy/nats/nats-server.conf by default)."""
    text = NATS_CONF.read_text() if text is None else text
    text = "\n".join(line for line in text.splitlines() if not line.strip().startswith("#"))
    return set(re.findall(r"\buser\s*[:=]\s*\"([^\"]+)\"", text))


def console_forbidden(variable):
    """What a console given this variable would hold that it must not, or None."""
    if variable == "LEADS_AUTH_DISABLED":
        return "switch that turns authentication off"
    if re.search(r"DATABASE_URL|_DB_|ROLE_PASSWORD|^PG", variable):
        return "database setting"
    if re.match(r"LEADS_AUTH_(SIGNING_KEY|KEY_FILES|SERVICE_TOKEN)", variable):
        return "token key"
    if variable.startswith("LEADS_NATS_"):
        return "NATS setting"
    return None


def runs_console(services):
    """Whether a LEADS_SERVICES value starts the console, and whether with services too."""
    names = {n.strip() for n in (services or "").split(",") if n.strip()}
    console = "console" in names or "all" in names
    return console, console and names != {"console"}


def endpoint_host(url):
    """(scheme, host, port) of an http(s) endpoint, or None."""
    match = re.match(r"^(https?)://([^/:]+)(?::([0-9]+))?/?$", url or "")
    return (match.group(1), match.group(2), int(match.group(3) or 0)) if match else None


# --- Kubernetes


def selects(selector, labels):
    """Whether a label selector (matchLabels, matchExpressions) selects these labels; an empty
    selector selects everything, a missing one nothing."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def policy_rules(policies, labels, direction):
    """The rules of every NetworkPolicy of the namespace that applies to pods with these labels
    in this direction (Ingress or Egress), and whether any policy applies at all (then what no
    rule allows is denied)."""
    rules, isolated = [], False
    for policy in policies:
        spec = policy.get("spec") or {}
        types = spec.get("policyTypes") or (["Ingress", "Egress"] if spec.get("egress") else ["Ingress"])
        if direction in types and selects(spec.get("podSelector"), labels):
            isolated = True
            rules += spec.get("ingress" if direction == "Ingress" else "egress") or []
    return rules, isolated


def rule_ports(rule):
    """The TCP/UDP ports a rule opens, or None when it names none (every port)."""
    ports = rule.get("ports")
    if not ports:
        return None
    return {(p.get("protocol", "TCP"), p.get("port")) for p in ports}


def peer_in_namespace(peer, labels):
    """Whether a peer of a rule admits a pod of the policy's own namespace with these labels."""
    if "ipBlock" in peer:
        return False
    namespaces = peer.get("namespaceSelector")
    # A namespaceSelector that names labels may or may not match this namespace: not counted.
    if namespaces is not None and namespaces != {}:
        return False
    return selects(peer.get("podSelector", {}), labels)


def check_console_k8s(docs, pods, services, tls):
    """The console Deployment: nothing secret but its client certificate, HTTP probes, the
    network reaching it and only what it calls, and TLS to the services in production."""
    failures = []
    consoles = []
    for pod in pods:
        for container in pod.containers():
            env = pod.env(container)
            console, mixed = runs_console(env.get("LEADS_SERVICES"))
            if mixed:
                failures.append(f"{pod.label}: runs the console together with services, whose keys and passwords it would hold")
            elif console and pod.kind == "Deployment":
                consoles.append((pod, container, env))
    if len(consoles) != 1:
        return failures + [f"{len(consoles)} Deployments run the console; one is expected"]
    pod, container, env = consoles[0]
    where = f"{pod.label} (console)"
    for variable in sorted(env):
        held = console_forbidden(variable)
        if held:
            failures.append(f"{where}: {variable} is set: the console holds no {held}")
        if str(env[variable]).startswith("<secret:"):
            failures.append(f"{where}: {variable} comes from a Secret: the console holds none but its certificate")
    for name in sorted(set(pod.secrets_read()) - {CONSOLE_SECRET}):
        failures.append(f"{where}: reads Secret {name}: the console may read {CONSOLE_SECRET} alone")
    if env.get("LEADS_GRPC_HOST") != "0.0.0.0":
        failures.append(f"{where}: LEADS_GRPC_HOST is not 0.0.0.0: the console would listen on the pod's loopback only")
    port = int(env.get("LEADS_CONSOLE_PORT") or CONSOLE_PORT)
    named = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
    if port not in named.values():
        failures.append(f"{where}: container port {port} (LEADS_CONSOLE_PORT) is not declared")
    for probe in ("readinessProbe", "livenessProbe"):
        check = (container.get(probe) or {}).get("httpGet")
        if not check:
            failures.append(f"{where}: no {probe} over HTTP (GET /healthz)")
            continue
        target = named.get(check.get("port"), check.get("port"))
        if check.get("path") != "/healthz" or target != port:
            failures.append(f"{where}: {probe} is not GET /healthz on port {port}")
    resources = container.get("resources") or {}
    if not (resources.get("requests") and resources.get("limits")):
        failures.append(f"{where}: no resource requests and limits")
    context = container.get("securityContext") or {}
    if not (
        (pod.spec.get("securityContext") or {}).get("runAsNonRoot")
        and context.get("allowPrivilegeEscalation") is False
        and context.get("readOnlyRootFilesystem") is True
        and "ALL" in ((context.get("capabilities") or {}).get("drop") or [])
        and pod.spec.get("automountServiceAccountToken") is False
    ):
        failures.append(f"{where}: not confined like the services (non-root, read-only root, no privilege escalation, "
                        "no capabilities, no service account token)")
    mtls = False
    for service, port_of in CONSOLE_CALLS.items():
        variable = f"LEADS_{service.upper()}_ENDPOINT"
        parsed = endpoint_host(env.get(variable))
        if not parsed or parsed[1].split(".")[0] != service or parsed[2] != port_of:
            failures.append(f"{where}: {variable} is not the {service} Service's gRPC port ({env.get(variable)!r})")
        elif tls and parsed[0] != "https":
            failures.append(f"{where}: {variable} is not https://")
        if service in services and services[service][2].get("LEADS_GRPC_TLS_CLIENT_CA_FILE"):
            mtls = True
    if tls:
        if env.get("LEADS_CONSOLE_SECURE_COOKIES") != "true":
            failures.append(f"{where}: LEADS_CONSOLE_SECURE_COOKIES is not true: the session cookie would travel without TLS")
        wanted = [("LEADS_GRPC_TLS_CA_FILE", "ca.crt")]
        if mtls:
            wanted += [("LEADS_GRPC_TLS_CERT_FILE", "tls.crt"), ("LEADS_GRPC_TLS_KEY_FILE", "tls.key")]
        for variable, key in wanted:
            path = env.get(variable)
            if (pod.file_source(container, path) if path else None) != (CONSOLE_SECRET, key):
                failures.append(f"{where}: {variable} is not {key} of Secret {CONSOLE_SECRET}")

    # Who reaches it, and what it reaches.
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    labels = pod.template_labels
    rules, isolated = policy_rules(policies, labels, "Ingress")
    if not isolated:
        failures.append(f"{where}: no NetworkPolicy selects it for ingress")
    elif not any(
        (rule_ports(r) is None or ("TCP", port) in rule_ports(r))
        and any(p.get("podSelector") == {} and "namespaceSelector" not in p for p in r.get("from") or [])
        for r in rules
    ):
        failures.append(f"{where}: no NetworkPolicy lets the pods of its namespace reach port {port}")
    rules, isolated = policy_rules(policies, labels, "Egress")
    if not isolated:
        failures.append(f"{where}: no NetworkPolicy limits its egress")
    # A service without its Deployment (reported above) is still a service the console calls.
    targets = {
        service: services[service][0].template_labels if service in services
        else {"app.kubernetes.io/name": service, "app.kubernetes.io/part-of": "leads"}
        for service in CONSOLE_CALLS
    }
    reached = set()
    for rule in rules:
        ports = rule_ports(rule)
        peers = rule.get("to")
        if ports is None or not peers:
            failures.append(f"{where}: an egress rule opens {'every port' if ports is None else 'ports to every destination'}")
            continue
        dns = all(port_of == 53 for _, port_of in ports)
        for peer in peers:
            if dns and ((peer.get("podSelector") or {}).get("matchLabels") or {}).get("k8s-app") == "kube-dns":
                continue
            admitted = {s for s, l in targets.items() if peer_in_namespace(peer, l)}
            if "namespaceSelector" in peer or "ipBlock" in peer or not admitted:
                failures.append(f"{where}: an egress rule reaches beyond the services it calls ({peer})")
                continue
            for protocol, port_of in ports:
                for service in admitted:
                    if port_of == CONSOLE_CALLS[service]:
                        reached.add(service)
                    else:
                        failures.append(f"{where}: may reach {service} on {protocol} {port_of}, which is not its gRPC port")
    for service in sorted(set(CONSOLE_CALLS) - reached):
        failures.append(f"{where}: no NetworkPolicy lets it reach {service} on {CONSOLE_CALLS[service]}")
    for service, (spod, _, _) in sorted(services.items()):
        if service not in CONSOLE_CALLS:
            continue
        rules, isolated = policy_rules(policies, spod.template_labels, "Ingress")
        if isolated and not any(
            (rule_ports(r) is None or ("TCP", CONSOLE_CALLS[service]) in rule_ports(r))
            and any(peer_in_namespace(p, labels) for p in r.get("from") or [])
            for r in rules
        ):
            failures.append(f"{spod.label} ({service}): no NetworkPolicy admits the console on {CONSOLE_CALLS[service]}")

    # How people reach it.
    service_docs = [
        d for d in docs
        if d.get("kind") == "Service" and (d.get("spec") or {}).get("selector")
        and selects({"matchLabels": d["spec"]["selector"]}, labels)
    ]
    if not any(any(p.get("port") == port or p.get("targetPort") in (port, "http") for p in (d["spec"].get("ports") or []))
               for d in service_docs):
        failures.append(f"{where}: no Service exposes port {port}")
    names = {d["metadata"]["name"] for d in service_docs}
    for ingress in (d for d in docs if d.get("kind") == "Ingress"):
        spec = ingress.get("spec") or {}
        backends = [(p.get("backend") or {}).get("service", {}).get("name")
                    for r in spec.get("rules") or [] for p in (r.get("http") or {}).get("paths") or []]
        backends.append(((spec.get("defaultBackend") or {}).get("service") or {}).get("name"))
        if not names & set(backends):
            continue
        hosts = {r.get("host") for r in spec.get("rules") or []}
        covered = {h for t in spec.get("tls") or [] if t.get("secretName") for h in t.get("hosts") or []}
        if not spec.get("tls") or None in hosts or hosts - covered:
            failures.append(f"Ingress {ingress['metadata']['name']}: serves the console without TLS for every host")
    return failures


def private_reach(peer):
    """The private ranges an egress peer reaches, or why it reaches unknown pods, or []."""
    if "ipBlock" in peer:
        block = peer["ipBlock"] or {}
        try:
            cidr = ipaddress.ip_network(block.get("cidr", ""), strict=False)
            excepted = [ipaddress.ip_network(e, strict=False) for e in block.get("except") or []]
        except ValueError as error:
            return [f"an ipBlock that does not parse ({error})"]
        return [
            str(private) for private in PRIVATE_RANGES
            if private.version == cidr.version and cidr.overlaps(private)
            and not any(e.version == private.version and private.subnet_of(e) for e in excepted)
        ]
    # Pods chosen by their labels are the cluster's own (DNS, Postgres, NATS); a peer choosing
    # every pod of a namespace, or of every namespace, is any address inside the cluster.
    pods = peer.get("podSelector")
    if not pods or not (pods.get("matchLabels") or pods.get("matchExpressions")):
        return [f"every pod of {'the namespace' if 'namespaceSelector' not in peer else 'the namespaces chosen'}"]
    return []


def every_address(peer):
    """Whether an egress peer is an ipBlock of every address (of IPv4 or IPv6), exceptions aside."""
    try:
        return ipaddress.ip_network((peer.get("ipBlock") or {}).get("cidr", ""), strict=False).prefixlen == 0
    except ValueError:
        return False


def check_webhook_egress(docs, services):
    """The webhook sender reaches public addresses on 80 and 443 (or it could deliver
    nothing), and no rule of any policy that selects it reaches a private range: a webhook URL
    naming one must meet the network's refusal besides the service's own."""
    if WEBHOOK_SENDER not in services:
        return []
    pod = services[WEBHOOK_SENDER][0]
    where = f"{pod.label} ({WEBHOOK_SENDER})"
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    rules, isolated = policy_rules(policies, pod.template_labels, "Egress")
    if not isolated:
        return [f"{where}: no NetworkPolicy limits its egress: webhooks could reach every private address"]
    failures = []
    public = set()
    for rule in rules:
        ports = rule_ports(rule)
        opened = WEBHOOK_PORTS if ports is None else ports & WEBHOOK_PORTS
        peers = rule.get("to")
        if not peers:
            failures.append(f"{where}: an egress rule reaches every destination, the private ranges among them")
            public |= opened
            continue
        for peer in peers:
            reached = private_reach(peer)
            if reached:
                failures.append(f"{where}: an egress rule reaches {', '.join(reached)} ({peer})")
            if every_address(peer):
                public |= opened
                if ports is None or ports - WEBHOOK_PORTS:
                    failures.append(f"{where}: an egress rule opens {'every port' if ports is None else sorted(ports - WEBHOOK_PORTS)} "
                                    "to the internet; webhooks need TCP 80 and 443 only")
    for protocol, port in sorted(WEBHOOK_PORTS - public):
        failures.append(f"{where}: no NetworkPolicy lets it reach public addresses on {protocol} {port} (webhooks)")
    return failures


class Pod:
    """A workload's pod template, with what its containers read."""

    def __init__(self, doc, configmaps):
        self.doc = doc
        self.kind = doc.get("kind")
        self.name = doc.get("metadata", {}).get("name")
        self.labels = doc.get("metadata", {}).get("labels") or {}
        spec = doc.get("spec", {})
        if self.kind == "CronJob":
            spec = spec.get("jobTemplate", {}).get("spec", {})
        self.spec = spec.get("template", {}).get("spec", {}) if self.kind != "Pod" else spec
        self.configmaps = configmaps

    @property
    def label(self):
        return f"{self.kind} {self.name}"

    @property
    def template_labels(self):
        spec = self.doc.get("spec", {})
        if self.kind == "Pod":
            return self.labels
        if self.kind == "CronJob":
            spec = spec.get("jobTemplate", {}).get("spec", {})
        return (spec.get("template", {}).get("metadata") or {}).get("labels") or {}

    def containers(self):
        return (self.spec.get("initContainers") or []) + (self.spec.get("containers") or [])

    def env(self, container):
        """name -> literal value (references to earlier variables expanded), or a
        `<secret:NAME/KEY>` marker for a value from a Secret."""
        out = {}
        for source in container.get("envFrom") or []:
            if "configMapRef" in source:
                data = self.configmaps.get(source["configMapRef"].get("name"), {})
                out.update({k: str(v) for k, v in data.items()})
            if "secretRef" in source:
                out[f"<all of secret {source['secretRef'].get('name')}>"] = f"<secret:{source['secretRef'].get('name')}/*>"
        for var in container.get("env") or []:
            name = var.get("name")
            if "value" in var:
                value = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: out.get(m.group(1), m.group(0)), str(var["value"]))
                out[name] = value
            elif "valueFrom" in var:
                ref = var["valueFrom"]
                if "secretKeyRef" in ref:
                    out[name] = f"<secret:{ref['secretKeyRef'].get('name')}/{ref['secretKeyRef'].get('key')}>"
                elif "configMapKeyRef" in ref:
                    ref = ref["configMapKeyRef"]
                    out[name] = str(self.configmaps.get(ref.get("name"), {}).get(ref.get("key"), ""))
                else:
                    out[name] = "<field>"
        return out

    def secrets_read(self):
        """Every Secret the pod reads: name -> set of keys (None: all of them)."""
        read = {}

        def add(name, key):
            keys = read.setdefault(name, set())
            if keys is not None:
                if key is None:
                    read[name] = None
                else:
                    keys.add(key)

        for container in self.containers():
            for source in container.get("envFrom") or []:
                if "secretRef" in source:
                    add(source["secretRef"].get("name"), None)
            for var in container.get("env") or []:
                ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    add(ref.get("name"), ref.get("key"))
        for volume in self.spec.get("volumes") or []:
            sources = []
            if "secret" in volume:
                sources.append(volume["secret"])
            for source in (volume.get("projected") or {}).get("sources") or []:
                if "secret" in source:
                    sources.append(dict(source["secret"], secretName=source["secret"].get("name")))
            for source in sources:
                items = source.get("items")
                if items:
                    for item in items:
                        add(source.get("secretName"), item.get("key"))
                else:
                    add(source.get("secretName"), None)
        return read

    def file_source(self, container, path):
        """The (Secret, key) a file path of the container comes from, or None."""
        volumes = {v.get("name"): v for v in self.spec.get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            base = mount.get("mountPath", "").rstrip("/") + "/"
            if not path.startswith(base):
                continue
            rest = path[len(base) :]
            volume = volumes.get(mount.get("name"), {})
            sources = []
            if "secret" in volume:
                sources.append((volume["secret"].get("secretName"), volume["secret"].get("items")))
            for source in (volume.get("projected") or {}).get("sources") or []:
                if "secret" in source:
                    sources.append((source["secret"].get("name"), source["secret"].get("items")))
            for name, items in sources:
                if items:
                    for item in items:
                        if item.get("path") == rest:
                            return name, item.get("key")
                elif "/" not in rest:
                    return name, rest
        return None


def load_docs(path):
    return [doc for doc in yaml.safe_load_all(pathlib.Path(path).read_text()) if doc]


def installer_secrets(path):
    """name -> set of keys, of the Secrets `install-secrets.sh --print` makes."""
    out = {}
    for doc in load_docs(path):
        if doc.get("kind") == "Secret":
            out[doc["metadata"]["name"]] = set((doc.get("data") or {}).keys()) | set((doc.get("stringData") or {}).keys())
    return out


def check_k8s(docs, installed, tls):
    failures = []
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d.get("kind") == "ConfigMap"}
    workload_kinds = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "ReplicaSet"}
    pods = [Pod(d, configmaps) for d in docs if d.get("kind") in workload_kinds]

    for doc in docs:
        where = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        if doc.get("kind") == "Secret":
            failures.append(f"{where}: a Secret is rendered from the repository (deploy/k8s/install-secrets.sh makes them)")
        if doc.get("kind") == "ConfigMap":
            for key, value in (doc.get("data") or {}).items():
                if key == "LEADS_AUTH_DISABLED":
                    failures.append(f"{where}: sets LEADS_AUTH_DISABLED")
                reason = literal_secret(key, value)
                if reason:
                    failures.append(f"{where}: {reason}")
        if doc.get("kind") == "Cluster" and doc.get("apiVersion", "").startswith("postgresql.cnpg.io"):
            secret = (doc.get("spec", {}).get("superuserSecret") or {}).get("name")
            if secret != "leads-postgres-admin":
                failures.append(f"{where}: superuserSecret must be leads-postgres-admin (made by install-secrets.sh)")

    # Literal secrets, switches and every Secret a workload reads.
    for pod in pods:
        for container in pod.containers():
            for var in container.get("env") or []:
                if var.get("name") == "LEADS_AUTH_DISABLED":
                    failures.append(f"{pod.label}: sets LEADS_AUTH_DISABLED")
                if "value" in var:
                    reason = literal_secret(var.get("name", ""), var["value"])
                    if reason:
                        failures.append(f"{pod.label}: {reason}")
        for name, keys in pod.secrets_read().items():
            if name in EXTERNAL_SECRETS:
                continue
            if name not in installed:
                failures.append(f"{pod.label}: reads Secret {name}, which install-secrets.sh does not make")
            elif keys:
                for key in sorted(keys - installed[name]):
                    failures.append(f"{pod.label}: reads key {key} of Secret {name}, which install-secrets.sh does not make")

    # The admin connection: the migrate Job, and the database itself.
    migrate = [p for p in pods if p.kind == "Job" and any((c.get("args") or [])[:1] == ["migrate"] for c in p.containers())]
    if len(migrate) != 1:
        failures.append(f"{len(migrate)} Jobs run `leads migrate`; one is expected")
    for pod in pods:
        admin = sorted(set(pod.secrets_read()) & ADMIN_SECRETS)
        is_database = pod.labels.get("app.kubernetes.io/name") == "postgres" and pod.kind == "StatefulSet"
        if admin and pod not in migrate and not is_database:
            failures.append(f"{pod.label}: reads the admin database Secret {', '.join(admin)}: only the migrate Job may")
    for pod in migrate:
        container = next(c for c in pod.containers() if (c.get("args") or [])[:1] == ["migrate"])
        env = pod.env(container)
        url = env.get("LEADS_DATABASE_URL", "")
        if not any(f"<secret:{name}/" in url for name in ADMIN_SECRETS):
            failures.append(f"{pod.label}: LEADS_DATABASE_URL does not take the admin credentials from their Secret")
        for service in SERVICES:
            path = env.get(f"LEADS_{service.upper()}_DB_PASSWORD_FILE")
            source = pod.file_source(container, path) if path else None
            if source != (f"leads-{service}", "db-password"):
                failures.append(f"{pod.label}: LEADS_{service.upper()}_DB_PASSWORD_FILE is not the db-password of Secret leads-{service}")
        if tls and not re.search(r"sslmode=verify-(full|ca)", url):
            failures.append(f"{pod.label}: the admin connection does not verify the database's certificate (sslmode=verify-full)")

    # The services.
    deployments = {}
    for pod in pods:
        if pod.kind != "Deployment":
            continue
        for container in pod.containers():
            env = pod.env(container)
            if env.get("LEADS_SERVICES") in SERVICES:
                deployments[env["LEADS_SERVICES"]] = (pod, container, env)
    for service in SERVICES:
        if service not in deployments:
            failures.append(f"no Deployment runs the {service} service")
    users = nats_users()
    own_secret_readers = {}
    for pod in pods:
        for name in pod.secrets_read():
            own_secret_readers.setdefault(name, set()).add(pod)
    for service, (pod, container, env) in sorted(deployments.items()):
        where = f"{pod.label} ({service})"
        upper = service.upper()
        own = f"leads-{service}"

        def from_secret(variable, secret, key):
            path = env.get(variable)
            if not path:
                failures.append(f"{where}: {variable} is not set")
                return
            source = pod.file_source(container, path)
            if source is None:
                failures.append(f"{where}: {variable}={path} is not a file of a mounted Secret")
            elif source != (secret, key):
                failures.append(f"{where}: {variable}={path} is key {source[1]} of Secret {source[0]}, not {key} of {secret}")

        if "LEADS_AUTH_DISABLED" in env:
            failures.append(f"{where}: LEADS_AUTH_DISABLED is set")
        key_files = [p for p in [env.get("LEADS_AUTH_SIGNING_KEY_FILE", "")] + env.get("LEADS_AUTH_KEY_FILES", "").split(",") if p.strip()]
        if not key_files:
            failures.append(f"{where}: no token key (LEADS_AUTH_SIGNING_KEY_FILE or LEADS_AUTH_KEY_FILES): the service would refuse to start")
        for path in key_files:
            if pod.file_source(container, path.strip()) is None:
                failures.append(f"{where}: token key {path} is not a file of a mounted Secret")
        if env.get("LEADS_DATABASE_MIGRATE_ON_START") != "false":
            failures.append(f"{where}: LEADS_DATABASE_MIGRATE_ON_START is not false")
        for variable in ("LEADS_DATABASE_URL", "LEADS_ROLE_PASSWORD"):
            if variable in env:
                failures.append(f"{where}: {variable} is set: only the migrate Job holds the admin connection")
        url = env.get(f"LEADS_{upper}_DATABASE_URL", "")
        if not re.match(rf"^postgres(ql)?://leads_{service}@", url):
            failures.append(f"{where}: LEADS_{upper}_DATABASE_URL does not connect as leads_{service} without a password in it")
        from_secret(f"LEADS_{upper}_DB_PASSWORD_FILE", own, "db-password")
        for other in SERVICES:
            if other != service and any(v.startswith(f"LEADS_{other.upper()}_D") for v in env):
                failures.append(f"{where}: holds settings of the {other} service's database")
        if env.get("LEADS_NATS_USER") != f"leads-{service}":
            failures.append(f"{where}: LEADS_NATS_USER is not leads-{service}")
        elif f"leads-{service}" not in users:
            failures.append(f"{where}: NATS user leads-{service} is not in deploy/nats/nats-server.conf")
        from_secret("LEADS_NATS_PASSWORD_FILE", own, "nats-password")
        others = sorted(p.label for p in own_secret_readers.get(own, set()) if p is not pod and p not in migrate)
        if others:
            failures.append(f"{where}: its Secret {own} is also read by {', '.join(others)}")
        if tls:
            for variable, key in (("LEADS_GRPC_TLS_CERT_FILE", "tls.crt"), ("LEADS_GRPC_TLS_KEY_FILE", "tls.key"),
                                  ("LEADS_GRPC_TLS_CLIENT_CA_FILE", "ca.crt"), ("LEADS_GRPC_TLS_CA_FILE", "ca.crt")):
                from_secret(variable, f"leads-{service}-tls", key)
            from_secret("LEADS_NATS_CA_FILE", f"leads-{service}-tls", "ca.crt")
            if not env.get("LEADS_NATS_URL", "").startswith("tls://") and env.get("LEADS_NATS_REQUIRE_TLS") != "true":
                failures.append(f"{where}: NATS is not required to use TLS")
            for variable in ("LEADS_LEAD_ENDPOINT", "LEADS_BROADCAST_ENDPOINT"):
                if not env.get(variable, "").startswith("https://"):
                    failures.append(f"{where}: {variable} is not https://")
            if not re.search(r"sslmode=verify-(full|ca)", url):
                failures.append(f"{where}: its database connection does not verify the server's certificate (sslmode=verify-full)")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if "grpc" in (container.get(probe) or {}):
                    failures.append(f"{where}: {probe} is a gRPC probe, which cannot speak TLS")
    failures += check_webhook_egress(docs, deployments)
    failures += check_console_k8s(docs, pods, deployments, tls)
    return failures


# --- Compose


def check_compose(project):
    failures = []
    services = project.get("services", {})
    secrets_init = services.get("secrets", {})
    secret_volumes = {v.get("source") for v in secrets_init.get("volumes") or [] if v.get("type") == "volume"}
    if not secret_volumes:
        failures.append("no `secrets` service makes the secrets into volumes")
    readers = {}
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            if volume.get("type") == "volume" and volume.get("source") in secret_volumes and name != "secrets":
                readers.setdefault(volume["source"], set()).add(name)

    def file_volume(service, path):
        for volume in service.get("volumes") or []:
            target = volume.get("target", "").rstrip("/") + "/"
            if path.startswith(target) and volume.get("type") == "volume" and volume.get("source") in secret_volumes:
                return volume
        return None

    for name, service in services.items():
        env = service.get("environment") or {}
        for variable, value in env.items():
            if variable == "LEADS_AUTH_DISABLED":
                failures.append(f"{name}: sets LEADS_AUTH_DISABLED")
            reason = literal_secret(variable, value)
            if reason:
                failures.append(f"{name}: {reason}")

    running = {}
    for name, service in services.items():
        env = service.get("environment") or {}
        if env.get("LEADS_SERVICES") in SERVICES:
            running[env["LEADS_SERVICES"]] = name
    for service in SERVICES:
        if service not in running:
            failures.append(f"no container runs the {service} service")
    users = nats_users()
    for service, name in sorted(running.items()):
        container = services[name]
        env = container.get("environment") or {}
        where = f"{name} ({service})"
        upper = service.upper()
        keys = [p for p in [env.get("LEADS_AUTH_SIGNING_KEY_FILE") or ""] + (env.get("LEADS_AUTH_KEY_FILES") or "").split(",") if p.strip()]
        if not keys:
            failures.append(f"{where}: no token key (LEADS_AUTH_SIGNING_KEY_FILE or LEADS_AUTH_KEY_FILES)")
        for path in keys:
            volume = file_volume(container, path.strip())
            if volume is None or not volume.get("read_only"):
                failures.append(f"{where}: token key {path} is not in a read-only secrets volume")
        if env.get("LEADS_DATABASE_MIGRATE_ON_START") != "false":
            failures.append(f"{where}: LEADS_DATABASE_MIGRATE_ON_START is not false")
        for variable in ("LEADS_DATABASE_URL", "LEADS_ROLE_PASSWORD", "PGPASSFILE", "PGPASSWORD"):
            if variable in env:
                failures.append(f"{where}: {variable} is set: only `migrate` holds the admin connection")
        if not re.match(rf"^postgres(ql)?://leads_{service}@", env.get(f"LEADS_{upper}_DATABASE_URL") or ""):
            failures.append(f"{where}: LEADS_{upper}_DATABASE_URL does not connect as leads_{service} without a password in it")
        own = set()
        for variable in (f"LEADS_{upper}_DB_PASSWORD_FILE", "LEADS_NATS_PASSWORD_FILE"):
            path = env.get(variable)
            volume = file_volume(container, path) if path else None
            if volume is None or not volume.get("read_only"):
                failures.append(f"{where}: {variable} is not a file of a read-only secrets volume")
            else:
                own.add(volume["source"])
        for volume in own:
            others = sorted(readers.get(volume, set()) - {name})
            if others:
                failures.append(f"{where}: its secrets volume {volume} is also mounted by {', '.join(others)}")
        if env.get("LEADS_NATS_USER") != f"leads-{service}":
            failures.append(f"{where}: LEADS_NATS_USER is not leads-{service}")
        elif f"leads-{service}" not in users:
            failures.append(f"{where}: NATS user leads-{service} is not in deploy/nats/nats-server.conf")

    failures += check_console_compose(services, secret_volumes)
    admin_readers = sorted(n for n, s in services.items() if "LEADS_DATABASE_URL" in (s.get("environment") or {}))
    if admin_readers != ["migrate"]:
        failures.append(f"the admin connection (LEADS_DATABASE_URL) is given to {admin_readers or 'no container'}, not to migrate alone")
    migrate = services.get("migrate", {})
    menv = migrate.get("environment") or {}
    for service in SERVICES:
        path = menv.get(f"LEADS_{service.upper()}_DB_PASSWORD_FILE")
        if not path or file_volume(migrate, path) is None:
            failures.append(f"migrate: LEADS_{service.upper()}_DB_PASSWORD_FILE is not a file of a secrets volume")
    nats = services.get("nats", {})
    command = " ".join((nats.get("entrypoint") or []) + (nats.get("command") or []))
    mounts = {v.get("target"): v.get("source", "") for v in nats.get("volumes") or []}
    conf = re.search(r"nats-server .*-c\s+(\S+)", command)
    if not conf or not mounts.get(conf.group(1), "").endswith("deploy/nats/nats-server.conf"):
        failures.append("nats: does not run with deploy/nats/nats-server.conf (the users of each service)")
    return failures


def check_console_compose(services, secret_volumes):
    """The console container: no secret of any kind, on loopback only, calling the services."""
    failures = []
    consoles = []
    for name, service in services.items():
        console, mixed = runs_console((service.get("environment") or {}).get("LEADS_SERVICES"))
        if mixed:
            failures.append(f"{name}: runs the console together with services, whose keys and passwords it would hold")
        elif console:
            consoles.append(name)
    if len(consoles) != 1:
        return failures + [f"{len(consoles)} containers run the console; one is expected"]
    name = consoles[0]
    service = services[name]
    env = service.get("environment") or {}
    where = f"{name} (console)"
    for variable in sorted(env):
        held = console_forbidden(variable)
        if held:
            failures.append(f"{where}: {variable} is set: the console holds no {held}")
    for volume in service.get("volumes") or []:
        if volume.get("source") in secret_volumes:
            failures.append(f"{where}: mounts the secrets volume {volume['source']}")
    for secret in service.get("secrets") or []:
        failures.append(f"{where}: reads the secret {secret.get('source')}")
    port = int(env.get("LEADS_CONSOLE_PORT") or CONSOLE_PORT)
    if env.get("LEADS_GRPC_HOST") != "0.0.0.0":
        failures.append(f"{where}: LEADS_GRPC_HOST is not 0.0.0.0: the published port would reach nothing")
    published = service.get("ports") or []
    if not any(p.get("target") == port for p in published):
        failures.append(f"{where}: port {port} is not published")
    for p in published:
        if p.get("host_ip") not in ("127.0.0.1", "::1"):
            failures.append(f"{where}: port {p.get('target')} is published beyond loopback ({p.get('host_ip') or 'every address'})")
    for called, port_of in CONSOLE_CALLS.items():
        variable = f"LEADS_{called.upper()}_ENDPOINT"
        parsed = endpoint_host(env.get(variable))
        if not parsed or parsed[1] != called or parsed[2] != port_of or called not in services:
            failures.append(f"{where}: {variable} is not the {called} container's gRPC port ({env.get(variable)!r})")
    return failures


# --- NATS chart values


def merge(base, overlay):
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def check_nats(values, installed, tls):
    failures = []
    includes = [v for k, v in ((values.get("config") or {}).get("merge") or {}).items() if k.endswith("$include")]
    data = ((values.get("configMap") or {}).get("merge") or {}).get("data") or {}
    texts = [data[name] for name in includes if name in data]
    if not texts:
        failures.append("the chart's configuration includes no users (values-accounts.yaml)")
    text = "\n".join(texts)
    users = nats_users(text)
    for service in SERVICES:
        if f"leads-{service}" not in users:
            failures.append(f"NATS user leads-{service} is missing")
    stripped = re.sub(r'"[^"\n]*"', '""', "\n".join(l for l in text.splitlines() if not l.strip().startswith("#")))
    if re.search(r"password\s*[:=]\s*[^\s$]", stripped):
        failures.append("a NATS user has a literal password")
    env_from = ((values.get("container") or {}).get("merge") or {}).get("envFrom") or []
    secrets = {s.get("secretRef", {}).get("name") for s in env_from}
    for variable in sorted(set(re.findall(r"\$([A-Z][A-Z0-9_]*)", stripped))):
        if not any(variable in installed.get(secret, set()) for secret in secrets):
            failures.append(f"${variable} is not a key of a Secret install-secrets.sh makes and the NATS container reads")
    if tls:
        config = values.get("config") or {}
        for part in ("nats", "cluster"):
            block = (config.get(part) or {}).get("tls") or {}
            if not block.get("enabled") or block.get("secretName") not in installed:
                failures.append(f"config.{part}.tls is not enabled with a certificate install-secrets.sh makes")
        ca = values.get("tlsCA") or {}
        if not ca.get("enabled") or ca.get("secretName") not in installed:
            failures.append("tlsCA is not enabled with the CA install-secrets.sh makes")
    return failures


# --- Files of the repository


CONFIG_SUFFIXES = (".yaml", ".yml", ".conf", ".toml", ".env", ".ini", ".properties", ".tf", ".json")
SECRET_ASSIGNMENT = re.compile(
    r"""(?ix) ^\s*-?\s*["']?([\w.-]*(password|passwd|secret|token|apikey|api_key)[\w.-]*)["']?\s*[:=]\s*["']?([^\s"'#]+)"""
)


def literal_default(value):
    """A `${VAR:-default}` (or `${VAR-default}`) whose default is a literal: a password that
    holds wherever the variable is not set."""
    return re.search(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-[^}$]", value) is not None


def check_literals(paths):
    failures = []
    for root in paths:
        root = pathlib.Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            # Configuration, not the code of the tools (whose patterns would match themselves).
            if path.suffix not in CONFIG_SUFFIXES and not path.name.startswith(("Dockerfile", ".env")):
                continue
            try:
                text = path.read_text()
            except UnicodeDecodeError:
                continue
            for number, line in enumerate(text.splitlines(), 1):
                where = f"{path}:{number}"
                if re.search(r"-----BEGIN [A-Z ]*(PRIVATE KEY|CERTIFICATE)-----", line) and "re.search" not in line:
                    failures.append(f"{where}: a key or certificate")
                if line.lstrip().startswith(("#", "//")):
                    continue
                if re.search(r"^\s*(literals|stringData)\s*:", line):
                    failures.append(f"{where}: secret values in a manifest ({line.strip()})")
                match = SECRET_ASSIGNMENT.match(line)
                if match:
                    name, value = match.group(1), match.group(3)
                    harmless = (
                        is_file_setting(name.upper())
                        or re.search(r"(name|ref|key|file|files|dir)$", name, re.IGNORECASE)
                        or (value.startswith(("$", "/", "<", "{", "[", "(", "|")) and not literal_default(value))
                        or value in ("true", "false", "null", "~")
                        or re.fullmatch(r"[0-9._]+[a-z]*", value)
                    )
                    if not harmless:
                        failures.append(f"{where}: {name} is given a literal value")
                for url in CREDENTIALED_URL.finditer(line):
                    if url.group(1) and (not url.group(1).startswith(("$", "<")) or literal_default(url.group(1))):
                        failures.append(f"{where}: a URL with a literal password")
    return failures


# --- Self-test


def selftest(compose_path, local_path, production_path, secrets_path):
    """Each way of breaking a deployment that the rules forbid, applied to the rendered
    deployments; every one must be caught."""
    project = json.loads(pathlib.Path(compose_path).read_text())
    local = load_docs(local_path)
    production = load_docs(production_path)
    installed = installer_secrets(secrets_path)

    def deployment(docs, name):
        return next(d for d in docs if d.get("kind") == "Deployment" and d["metadata"]["name"] == name)

    def container(doc):
        return doc["spec"]["template"]["spec"]["containers"][0]

    def k8s(mutate, tls=False):
        def run():
            docs = copy.deepcopy(production if tls else local)
            mutate(docs)
            return check_k8s(docs, installed, tls)

        return run

    def compose(mutate):
        def run():
            data = copy.deepcopy(project)
            mutate(data)
            return check_compose(data)

        return run

    def configmap(docs, name="leads-config"):
        return next(d for d in docs if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == name)["data"]

    def policy(docs, name):
        return next(d for d in docs if d.get("kind") == "NetworkPolicy" and d["metadata"]["name"] == name)

    def console(docs):
        return container(deployment(docs, "console"))

    def console_pod(docs):
        return deployment(docs, "console")["spec"]["template"]["spec"]

    def mount_auth(docs):
        console_pod(docs)["volumes"].append({"name": "auth", "secret": {"secretName": "leads-auth"}})
        console(docs)["volumeMounts"].append({"name": "auth", "mountPath": "/etc/leads/auth", "readOnly": True})
        console(docs)["env"].append({"name": "LEADS_AUTH_KEY_FILES", "value": "/etc/leads/auth/signing.key"})

    def unadmit_console(docs):
        peers = policy(docs, "people-grpc")["spec"]["ingress"][0]["from"]
        peers[:] = [p for p in peers if "console" not in json.dumps(p)]

    def console_ingress_without_tls(docs):
        next(d for d in docs if d.get("kind") == "Ingress")["spec"].pop("tls")

    def webhook_rule(docs):
        return policy(docs, "notifications-egress-webhooks")["spec"]["egress"][0]

    def unexcept(cidr):
        def mutate(docs):
            block = webhook_rule(docs)["to"][0]["ipBlock"]
            block["except"] = [c for c in block["except"] if c != cidr]
        return mutate

    breaks = {
        "authentication switched off (k8s)": k8s(
            lambda d: container(deployment(d, "lead"))["env"].append({"name": "LEADS_AUTH_DISABLED", "value": "true"})),
        "no token key (k8s)": k8s(
            lambda d: [configmap(d).pop(k) for k in ("LEADS_AUTH_SIGNING_KEY_FILE", "LEADS_AUTH_KEY_FILES")]),
        "admin URL given to a service (k8s)": k8s(
            lambda d: container(deployment(d, "ingest"))["env"].extend([
                {"name": "LEADS_DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "leads-postgres-admin", "key": "password"}}},
                {"name": "LEADS_DATABASE_URL", "value": "postgres://postgres:$(LEADS_DB_PASSWORD)@postgres/leads"}])),
        "services migrate on start (k8s)": k8s(lambda d: configmap(d).update(LEADS_DATABASE_MIGRATE_ON_START="true")),
        "a service reads another's secret (k8s)": k8s(
            lambda d: deployment(d, "ingest")["spec"]["template"]["spec"]["volumes"][1]["secret"].update(secretName="leads-lead")),
        "a NATS user shared (k8s)": k8s(
            lambda d: [e.update(value="leads-lead") for e in container(deployment(d, "followup"))["env"] if e["name"] == "LEADS_NATS_USER"]),
        "a Secret committed (k8s)": k8s(
            lambda d: d.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "leads-auth"}, "stringData": {"signing.key": "x" * 40}})),
        "a literal password (k8s)": k8s(
            lambda d: container(deployment(d, "lead"))["env"].append({"name": "LEADS_NATS_PASSWORD", "value": "hunter2hunter2"})),
        "a Secret the installer does not make (k8s)": k8s(
            lambda d: deployment(d, "lead")["spec"]["template"]["spec"]["volumes"][0]["secret"].update(secretName="leads-keys")),
        "a service missing (k8s)": k8s(lambda d: d.remove(deployment(d, "people"))),
        "webhooks may reach the private ranges (k8s)": k8s(lambda d: webhook_rule(d)["to"][0]["ipBlock"].pop("except")),
        "webhooks may reach the cloud's metadata service (k8s)": k8s(unexcept("169.254.0.0/16")),
        "webhooks may reach every destination (production)": k8s(lambda d: webhook_rule(d).pop("to"), tls=True),
        "webhooks may reach every port of the internet (k8s)": k8s(lambda d: webhook_rule(d).pop("ports")),
        "webhooks may reach every pod of the cluster (k8s)": k8s(
            lambda d: webhook_rule(d)["to"].append({"namespaceSelector": {}})),
        "webhooks cannot be delivered (k8s)": k8s(lambda d: d.remove(policy(d, "notifications-egress-webhooks"))),
        "plaintext gRPC (production)": k8s(lambda d: configmap(d).pop("LEADS_GRPC_TLS_CERT_FILE"), tls=True),
        "plaintext NATS (production)": k8s(
            lambda d: [configmap(d).pop("LEADS_NATS_CA_FILE"), configmap(d).update(LEADS_NATS_URL="nats://nats:4222",
                                                                               LEADS_NATS_REQUIRE_TLS="false")], tls=True),
        "unverified Postgres (production)": k8s(lambda d: configmap(d).update(LEADS_DB_PARAMS="sslmode=require"), tls=True),
        "console given the admin database URL (k8s)": k8s(
            lambda d: console(d)["env"].append({"name": "LEADS_DATABASE_URL", "value": "postgres://postgres@postgres/leads"})),
        "console mounts the token key (k8s)": k8s(mount_auth),
        "console reads the services' ConfigMap, which names the key (k8s)": k8s(
            lambda d: console(d)["envFrom"].append({"configMapRef": {"name": "leads-config"}})),
        "console given NATS credentials (k8s)": k8s(
            lambda d: console(d)["env"].extend([
                {"name": "LEADS_NATS_USER", "value": "leads-lead"},
                {"name": "LEADS_NATS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "leads-lead", "key": "nats-password"}}}])),
        "console with authentication switched off (k8s)": k8s(
            lambda d: console(d)["env"].append({"name": "LEADS_AUTH_DISABLED", "value": "true"})),
        "console without a readiness probe (k8s)": k8s(lambda d: console(d).pop("readinessProbe")),
        "console probed on another path (k8s)": k8s(lambda d: console(d)["livenessProbe"]["httpGet"].update(path="/")),
        "console missing (k8s)": k8s(lambda d: d.remove(deployment(d, "console"))),
        "console unreachable: its NetworkPolicy gone (k8s)": k8s(lambda d: d.remove(policy(d, "console-http"))),
        "console may reach Postgres and NATS (k8s)": k8s(
            lambda d: policy(d, "leads-egress")["spec"]["podSelector"].pop("matchExpressions")),
        "console may reach ingest (k8s)": k8s(
            lambda d: policy(d, "console-egress")["spec"]["egress"][1]["to"][0]["podSelector"]["matchLabels"].update(
                {"app.kubernetes.io/name": "ingest"})),
        "a service does not admit the console (k8s)": k8s(unadmit_console),
        "console calls a service in plaintext (production)": k8s(
            lambda d: configmap(d, "leads-console-config").update(LEADS_PEOPLE_ENDPOINT="http://people:50057"), tls=True),
        "console's cookie not Secure (production)": k8s(
            lambda d: configmap(d, "leads-console-config").update(LEADS_CONSOLE_SECURE_COOKIES="false"), tls=True),
        "console without its client certificate (production)": k8s(
            lambda d: configmap(d, "leads-console-config").pop("LEADS_GRPC_TLS_CERT_FILE"), tls=True),
        "console's Ingress without TLS (production)": k8s(console_ingress_without_tls, tls=True),
        "console mounts the signing key (compose)": compose(
            lambda p: p["services"]["console"].setdefault("volumes", []).append(
                {"type": "volume", "source": "secrets-auth", "target": "/run/leads/auth", "read_only": True})),
        "console given a database password (compose)": compose(
            lambda p: p["services"]["console"]["environment"].update(LEADS_LEAD_DB_PASSWORD_FILE="/run/leads/own/db-password")),
        "console published beyond loopback (compose)": compose(
            lambda p: p["services"]["console"]["ports"][0].update(host_ip="")),
        "console runs with the services (compose)": compose(
            lambda p: p["services"]["lead"]["environment"].update(LEADS_SERVICES="lead,console")),
        "authentication switched off (compose)": compose(
            lambda p: p["services"]["lead"]["environment"].update(LEADS_AUTH_DISABLED="true")),
        "no token key (compose)": compose(
            lambda p: [p["services"]["broadcast"]["environment"].pop(k) for k in ("LEADS_AUTH_SIGNING_KEY_FILE", "LEADS_AUTH_KEY_FILES")]),
        "admin URL given to a service (compose)": compose(
            lambda p: p["services"]["ingest"]["environment"].update(LEADS_DATABASE_URL="postgres://postgres:leads@postgres/leads")),
        "services migrate on start (compose)": compose(
            lambda p: p["services"]["assignment"]["environment"].update(LEADS_DATABASE_MIGRATE_ON_START="true")),
        "a service mounts another's secrets (compose)": compose(
            lambda p: p["services"]["ingest"]["volumes"].append(
                {"type": "volume", "source": "secrets-lead", "target": "/run/leads/lead", "read_only": True})),
        "NATS without the users (compose)": compose(lambda p: p["services"]["nats"].update(entrypoint=None, command=["-js"])),
    }
    # A break of the console's rules counts only when a failure names the console: another
    # rule failing by chance would prove nothing about them.
    failures = [
        f"not caught: {name}" for name, run in breaks.items()
        if not [f for f in run() if "console" not in name or "console" in f]
    ]
    if not failures:
        print(f"  {len(breaks)} ways of breaking the deployments, each caught")
    return failures


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    what, args = argv[1], argv[2:]
    tls = "--tls" in args
    args = [a for a in args if a != "--tls"]
    if what == "compose":
        failures = check_compose(json.loads(pathlib.Path(args[0]).read_text()))
    elif what == "k8s":
        name, rendered, secrets = args
        failures = check_k8s(load_docs(rendered), installer_secrets(secrets), tls)
    elif what == "nats":
        values = {}
        for path in args[1:]:
            values = merge(values, yaml.safe_load(pathlib.Path(path).read_text()) or {})
        failures = check_nats(values, installer_secrets(args[0]), tls)
    elif what == "literals":
        failures = check_literals(args)
    elif what == "selftest":
        failures = selftest(*args)
    else:
        print(f"unknown check {what}", file=sys.stderr)
        return 2
    for failure in failures:
        print(f"  FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
