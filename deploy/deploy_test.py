#!/usr/bin/python3
"""Checks deploy/ against the code it deploys, without a Kubernetes cluster.

  deploy_test.py CHUNKFLOWCTL

Each check is a JUnit test case (written to $XML_OUTPUT_FILE when Bazel sets
it, so skips show up as skips):

  k8s_schema         the manifests against Kubernetes' own OpenAPI schemas,
                     strict (unknown fields fail), with kubernetes-validate
                     (scripts/setup.sh installs it from PyPI; skipped,
                     visibly, where it is missing)
  k8s_consistency    what a typo would break silently: selectors, port
                     names, probes, volumes, $(VAR)s, the coordinator
                     address; and Pod Security "restricted"
  k8s_flags          every container command is a chunkflowctl command and
                     every flag one it accepts
  k8s_daemons        the coordinator and a worker started with the manifests'
                     own arguments (ports and paths moved to this machine,
                     --device=cuda to cpu): the worker registers under its pod
                     name and address, both serve /metrics, SIGTERM stops both
  prometheus_config  promtool check config, and the relabelling run on the
                     manifests' pods: both kinds are kept, at their metrics
                     port, with the job labels the alerts and dashboard use
  alert_rules        promtool check rules and promtool test rules
  grafana            the dashboard parses; every query names a job that
                     prometheus.yml produces
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
import xml.etree.ElementTree as ET

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
K8S = os.path.join(HERE, "k8s")
PROM = os.path.join(HERE, "prometheus")
GRAFANA = os.path.join(HERE, "grafana", "chunkflow.json")
PROMTOOL = "/usr/bin/promtool"
# Where scripts/setup.sh puts kubernetes-validate.
VENV = os.environ.get("CHUNKFLOW_TOOLS_VENV") or os.path.join(
    os.environ.get("HOME", "/root"), ".cache", "chunkflow", "venv")
K8S_VERSION = "1.29.0"  # the oldest Kubernetes the manifests are written for (gRPC probes: 1.27)


class Skip(Exception):
    pass


def load_manifests():
    """[(file, doc)] for every resource in deploy/k8s except the kustomization."""
    out = []
    for name in sorted(os.listdir(K8S)):
        if not name.endswith(".yaml") or name == "kustomization.yaml":
            continue
        with open(os.path.join(K8S, name)) as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    out.append((name, doc))
    return out


def workloads(manifests):
    return [d for _, d in manifests if d["kind"] in ("StatefulSet", "Deployment")]


def component(workload):
    return workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]


def flag_values(args):
    """{'--flag': 'value'} of a container's args (all of the form --flag=value)."""
    out = {}
    for a in args[1:]:
        m = re.fullmatch(r"(--[a-z_0-9]+)=(.*)", a)
        assert m, f"argument {a!r} is not --flag=value"
        out[m.group(1)] = m.group(2)
    return out


def port_of(listen):
    return int(listen.rsplit(":", 1)[1])


def check_k8s_schema():
    validate = os.path.join(VENV, "bin", "kubernetes-validate")
    if not os.access(validate, os.X_OK):
        raise Skip(f"kubernetes-validate not installed at {validate} "
                   "(scripts/setup.sh installs it from PyPI)")
    files = [os.path.join(K8S, f) for f in sorted(os.listdir(K8S))
             if f.endswith(".yaml") and f != "kustomization.yaml"]
    r = subprocess.run([validate, "--strict", "-k", K8S_VERSION] + files,
                       capture_output=True, text=True)
    print(r.stdout + r.stderr)
    assert r.returncode == 0, "kubernetes-validate failed (above)"
    # The validator itself must reject a misspelled field, or this check proves nothing.
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n"
                "spec: {ports: [{port: 1, targetPrt: 2}]}\n")
    bad = subprocess.run([validate, "--strict", "-k", K8S_VERSION, f.name],
                         capture_output=True, text=True)
    os.unlink(f.name)
    assert bad.returncode != 0, "kubernetes-validate --strict accepted a misspelled field"


def check_k8s_consistency():
    manifests = load_manifests()
    with open(os.path.join(K8S, "kustomization.yaml")) as f:
        kust = yaml.safe_load(f)
    files = sorted(f for f in os.listdir(K8S) if f.endswith(".yaml") and f != "kustomization.yaml")
    assert sorted(kust["resources"]) == files, \
        f"kustomization.yaml lists {sorted(kust['resources'])}, the folder has {files}"
    claims = {d["metadata"]["name"] for _, d in manifests if d["kind"] == "PersistentVolumeClaim"}
    services = {d["metadata"]["name"]: d for _, d in manifests if d["kind"] == "Service"}
    by_component = {}
    for w in workloads(manifests):
        name = w["metadata"]["name"]
        tmpl = w["spec"]["template"]
        labels = tmpl["metadata"]["labels"]
        sel = w["spec"]["selector"]["matchLabels"]
        assert all(labels.get(k) == v for k, v in sel.items()), \
            f"{name}: selector {sel} does not match its pod labels {labels}"
        assert w["spec"]["serviceName"] in services, \
            f"{name}: serviceName {w['spec']['serviceName']} is not a Service here"
        spec = tmpl["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        volumes.update({t["metadata"]["name"]: t for t in w["spec"].get("volumeClaimTemplates", [])})
        for v in spec.get("volumes", []):
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                assert claim in claims, f"{name}: volume {v['name']} claims {claim}, not defined here"
        (c,) = spec["containers"]
        # Pod Security "restricted" (Kubernetes' pod-security-standards), the
        # checks these pods can fail.
        psc, csc = spec.get("securityContext", {}), c.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True, f"{name}: runAsNonRoot is not true"
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", \
            f"{name}: no RuntimeDefault seccompProfile"
        assert csc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation is not false"
        assert csc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities are not all dropped"
        allowed = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                   "projected", "secret"}
        for v in spec.get("volumes", []):
            kinds = set(v) - {"name"}
            assert kinds <= allowed, f"{name}: volume {v['name']} is of a kind 'restricted' refuses: {kinds}"
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        env = {e["name"] for e in c.get("env", [])}
        for a in c["args"]:
            for var in re.findall(r"\$\((\w+)\)", a):
                assert var in env, f"{name}: argument {a} uses $({var}), which is not in env"
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"{name}: mount {m['name']} has no volume"
        flags = flag_values(c["args"])
        if "--metrics_listen" in flags:
            mp = port_of(flags["--metrics_listen"])
            assert ports.get("metrics") == mp, \
                f"{name}: --metrics_listen port {mp}, container port 'metrics' {ports.get('metrics')}"
            ann = tmpl["metadata"].get("annotations", {})
            assert ann.get("prometheus.io/port") == str(mp), \
                f"{name}: prometheus.io/port {ann.get('prometheus.io/port')} != metrics port {mp}"
        if "--listen" in flags:
            gp = port_of(flags["--listen"])
            assert ports.get("grpc") == gp, f"{name}: --listen port {gp}, container port 'grpc' {ports.get('grpc')}"
        if "--db" in flags:
            claimed = [m["mountPath"] for m in c.get("volumeMounts", [])
                       if m["name"] in {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}]
            assert any(flags["--db"].startswith(m.rstrip("/") + "/") for m in claimed), \
                f"{name}: --db={flags['--db']} is not on the pod's own persistent volume " \
                f"(volumeClaimTemplates mounted at {claimed}); the database would not survive the pod"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            p = c.get(probe)
            if not p:
                continue
            target = (p.get("grpc") or p.get("httpGet") or p.get("tcpSocket"))["port"]
            if "grpc" in p:
                assert "--listen" in flags and target == port_of(flags["--listen"]), \
                    f"{name}: {probe} calls gRPC on port {target}, but gRPC listens on {flags.get('--listen')}"
            if isinstance(target, str):
                assert target in ports, f"{name}: {probe} port '{target}' is not a container port"
            else:
                assert target in ports.values(), f"{name}: {probe} port {target} is not a container port"
        by_component[component(w)] = (w, flags, ports)
    for sname, s in services.items():
        sel = s["spec"]["selector"]
        matched = [w for w, _, _ in by_component.values()
                   if all(w["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())]
        assert len(matched) == 1, f"Service {sname} selects {len(matched)} workloads"
        (_, _, ports), = [by_component[component(matched[0])]]
        for p in s["spec"]["ports"]:
            assert p["targetPort"] in ports, f"Service {sname}: targetPort {p['targetPort']} is not a container port"
    assert set(by_component) == {"coordinator", "worker"}, f"components: {sorted(by_component)}"
    _, wflags, _ = by_component["worker"]
    host, port = wflags["--coordinator"].rsplit(":", 1)
    coord_svc = services.get(host)
    assert coord_svc is not None, f"worker --coordinator={wflags['--coordinator']}: no Service {host}"
    assert int(port) in [p["port"] for p in coord_svc["spec"]["ports"]], \
        f"Service {host} has no port {port}"
    print("ok: selectors, services, ports, probes, volumes, env, the coordinator address, "
          "Pod Security 'restricted'")


def chunkflowctl_flags(binary):
    r = subprocess.run([binary, "--help"], capture_output=True, text=True)
    flags = set(re.findall(r"^\s+--([a-z_0-9]+) \(", r.stdout + r.stderr, re.M))
    assert len(flags) > 20, f"could not read the flags from {binary} --help"
    commands = set(re.findall(r"^  ([a-z][a-z-]+) ", r.stdout + r.stderr, re.M))
    for line in re.findall(r"^  (\S+(?: \| \S+)+)", r.stdout + r.stderr, re.M):
        commands.update(line.split(" | "))
    return flags, commands


def check_k8s_flags(binary):
    flags, commands = chunkflowctl_flags(binary)
    for w in workloads(load_manifests()):
        (c,) = w["spec"]["template"]["spec"]["containers"]
        name = w["metadata"]["name"]
        assert c["args"][0] in commands, f"{name}: '{c['args'][0]}' is not a chunkflowctl command"
        for f in flag_values(c["args"]):
            assert f[2:] in flags, f"{name}: chunkflowctl has no flag {f}"
        print(f"ok: {name}: chunkflowctl {c['args'][0]} with {len(c['args']) - 1} known flags")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def http_get(url):
    return urllib.request.urlopen(url, timeout=5).read().decode()


def check_k8s_daemons(binary):
    manifests = load_manifests()
    ws = {component(w): w for w in workloads(manifests)}
    tmp = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
    gport, cmport, wmport = free_port(), free_port(), free_port()
    procs = []

    def args_of(w, pod_name):
        (c,) = w["spec"]["template"]["spec"]["containers"]
        # 127.0.0.2: not --host's default, so a manifest without
        # --host=$(POD_IP) shows up as the wrong address below.
        env = {"POD_NAME": pod_name, "POD_IP": "127.0.0.2"}
        out = []
        for a in c["args"]:
            a = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a)
            # This machine's ports and folders for the pod's own; no GPU here.
            a = re.sub(r"^--listen=.*:(\d+)$", f"--listen=127.0.0.1:{gport}", a)
            a = re.sub(r"^--metrics_listen=.*$", "--metrics_listen=127.0.0.1:"
                       + str(cmport if w is ws["coordinator"] else wmport), a)
            a = re.sub(r"^--coordinator=.*$", f"--coordinator=127.0.0.1:{gport}", a)
            a = re.sub(r"^--db=/var/lib/chunkflow", f"--db={tmp}", a)
            a = a.replace("--device=cuda", "--device=cpu")
            out.append(a)
        return out

    def start(w, pod_name, log):
        p = subprocess.Popen([binary] + args_of(w, pod_name), stdout=open(log, "w"),
                             stderr=subprocess.STDOUT)
        procs.append((p, log))
        return p

    def wait_for(what, cond, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            for p, log in procs:
                if p.poll() is not None:
                    raise AssertionError(f"{log} exited {p.returncode}:\n" + open(log).read()[-2000:])
            if cond():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")

    try:
        coord = start(ws["coordinator"], "chunkflow-coordinator-0", os.path.join(tmp, "coordinator.log"))
        wait_for("the coordinator to listen",
                 lambda: "listening" in open(os.path.join(tmp, "coordinator.log")).read())
        worker = start(ws["worker"], "chunkflow-worker-0", os.path.join(tmp, "worker.log"))

        def listed():
            r = subprocess.run([binary, "list-workers", f"--coordinator=127.0.0.1:{gport}", "--format=json"],
                               capture_output=True, text=True)
            return r.returncode == 0 and "chunkflow-worker-0" in r.stdout and "127.0.0.2" in r.stdout
        wait_for("list-workers to show chunkflow-worker-0 at 127.0.0.2", listed)
        print("ok: the worker registered as chunkflow-worker-0 (its $(POD_NAME)) at 127.0.0.2 ($(POD_IP))")
        for what, port, metric in (("coordinator", cmport, "chunkflow_workers"),
                                   ("worker", wmport, "chunkflow_heartbeats_total")):
            body = http_get(f"http://127.0.0.1:{port}/metrics")
            assert metric in body, f"{what} /metrics has no {metric}"
        print("ok: both serve /metrics on their metrics_listen ports")
        grace = {c: ws[c]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] for c in ws}
        for name, p, g in (("worker", worker, grace["worker"]), ("coordinator", coord, grace["coordinator"])):
            p.send_signal(signal.SIGTERM)
            try:
                rc = p.wait(timeout=g)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"the {name} did not stop within terminationGracePeriodSeconds ({g} s) of SIGTERM")
            assert rc == 0, f"the {name} exited {rc} on SIGTERM (Kubernetes' stop), want 0"
        print("ok: SIGTERM stops the worker and the coordinator with status 0, inside the grace period")
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def relabel(configs, labels):
    """Prometheus' relabelling (keep, drop, replace), enough for prometheus.yml."""
    labels = dict(labels)
    for c in configs:
        value = c.get("separator", ";").join(labels.get(s, "") for s in c.get("source_labels", []))
        regex = re.compile(c.get("regex", "(.*)"))
        action = c.get("action", "replace")
        m = regex.fullmatch(value)
        if action == "keep" and not m:
            return None
        if action == "drop" and m:
            return None
        if action == "replace" and m:
            repl = re.sub(r"\$(\d+)", r"\\\1", c.get("replacement", "$1"))
            labels[c["target_label"]] = m.expand(repl)
    return labels


def meta_labels(pod_name, tmpl, port):
    def sane(k):
        return re.sub(r"[^a-zA-Z0-9_]", "_", k)
    out = {"__address__": f"10.0.0.7:{port['containerPort']}", "__metrics_path__": "/metrics",
           "__meta_kubernetes_namespace": "chunkflow", "__meta_kubernetes_pod_name": pod_name,
           "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
           "__meta_kubernetes_pod_container_port_number": str(port["containerPort"])}
    for k, v in tmpl["metadata"].get("labels", {}).items():
        out["__meta_kubernetes_pod_label_" + sane(k)] = v
    for k, v in tmpl["metadata"].get("annotations", {}).items():
        out["__meta_kubernetes_pod_annotation_" + sane(k)] = v
    return out


def scrape_jobs():
    """{job label: metrics port} that prometheus.yml makes of the manifests' pods."""
    with open(os.path.join(PROM, "prometheus.yml")) as f:
        conf = yaml.safe_load(f)
    (job,) = conf["scrape_configs"]
    found = {}
    for w in workloads(load_manifests()):
        tmpl = w["spec"]["template"]
        (c,) = tmpl["spec"]["containers"]
        for port in c.get("ports", []):
            t = relabel(job["relabel_configs"], meta_labels(w["metadata"]["name"] + "-0", tmpl, port))
            if t is None:
                continue
            assert t["job"] not in found, f"two targets of job {t['job']} per pod"
            found[t["job"]] = int(t["__address__"].rsplit(":", 1)[1])
            assert t["__metrics_path__"] == "/metrics"
    return found


def check_prometheus_config():
    with open(os.path.join(PROM, "prometheus.yml")) as f:
        conf = yaml.safe_load(f)
    # Debian's Prometheus is built without Kubernetes service discovery, so
    # promtool checks everything else: the discovery block is swapped for a
    # static target (the relabelling below stands in for the discovery).
    tmp = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
    for job in conf["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs", None), "the chunkflow job has no kubernetes_sd_configs"
        job["static_configs"] = [{"targets": ["127.0.0.1:1"]}]
    with open(os.path.join(tmp, "prometheus.yml"), "w") as f:
        yaml.safe_dump(conf, f)
    shutil.copy(os.path.join(PROM, "alerts.yml"), tmp)
    r = subprocess.run([PROMTOOL, "check", "config", os.path.join(tmp, "prometheus.yml")],
                       capture_output=True, text=True)
    shutil.rmtree(tmp, ignore_errors=True)
    assert r.returncode == 0, "promtool check config:\n" + r.stdout + r.stderr
    jobs = scrape_jobs()
    want = {}
    for w in workloads(load_manifests()):
        (c,) = w["spec"]["template"]["spec"]["containers"]
        want["chunkflow-" + component(w)] = port_of(flag_values(c["args"])["--metrics_listen"])
    assert jobs == want, f"prometheus.yml scrapes {jobs}; the manifests serve /metrics at {want}"
    print(f"ok: promtool check config; the relabelling keeps {jobs}")


def jobs_named(text):
    return set(re.findall(r'job="([^"]+)"', text))


def check_alert_rules():
    for cmd in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        r = subprocess.run([PROMTOOL] + cmd, cwd=PROM, capture_output=True, text=True)
        print(r.stdout + r.stderr)
        assert r.returncode == 0, f"promtool {' '.join(cmd)} failed (above)"
    with open(os.path.join(PROM, "alerts.yml")) as f:
        text = f.read()
    rules = [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]]
    with open(os.path.join(PROM, "alerts_test.yml")) as f:
        tested = set(re.findall(r"alertname: (\w+)", f.read()))
    untested = {r["alert"] for r in rules} - tested
    assert not untested, f"alerts without a unit test in alerts_test.yml: {sorted(untested)}"
    bad = jobs_named(text) - set(scrape_jobs())
    assert not bad, f"alerts.yml selects jobs {sorted(bad)}, which prometheus.yml never produces"


def check_grafana():
    with open(GRAFANA) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(dash["panels"]) >= 8 and all(p.get("targets") for p in dash["panels"]), \
        "every panel needs a query"
    bad = jobs_named("\n".join(exprs)) - set(scrape_jobs())
    assert not bad, f"the dashboard selects jobs {sorted(bad)}, which prometheus.yml never produces"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    print(f"ok: {len(dash['panels'])} panels, {len(exprs)} queries")


def main():
    binary = sys.argv[1]
    checks = [
        ("k8s_schema", check_k8s_schema),
        ("k8s_consistency", check_k8s_consistency),
        ("k8s_flags", lambda: check_k8s_flags(binary)),
        ("k8s_daemons", lambda: check_k8s_daemons(binary)),
        ("prometheus_config", check_prometheus_config),
        ("alert_rules", check_alert_rules),
        ("grafana", check_grafana),
    ]
    suite = ET.Element("testsuite", name="deploy_test")
    failed = 0
    for name, fn in checks:
        case = ET.SubElement(suite, "testcase", classname="deploy", name=name)
        print(f"=== {name}", flush=True)
        try:
            fn()
            print(f"PASS {name}", flush=True)
        except Skip as e:
            print(f"SKIPPED {name}: {e}", flush=True)
            ET.SubElement(case, "skipped", message=str(e))
        except Exception as e:  # an assertion or anything unexpected fails the case
            failed += 1
            traceback.print_exc()
            print(f"FAIL {name}: {e}", flush=True)
            ET.SubElement(case, "failure", message=str(e))
    suite.set("tests", str(len(checks)))
    suite.set("failures", str(failed))
    xml_out = os.environ.get("XML_OUTPUT_FILE")
    if xml_out:
        root = ET.Element("testsuites")
        root.append(suite)
        ET.ElementTree(root).write(xml_out, encoding="unicode", xml_declaration=True)
    print(f"{len(checks) - failed} of {len(checks)} checks passed or skipped; {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
