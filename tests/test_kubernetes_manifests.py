"""examples/kubernetes/ against the units: every container's ``qasup up`` arguments are planned exactly as qasup
would plan them in that pod (qasup's own argument parser and load_plan, with the container's environment as
Kubernetes builds it: env, envFrom, configMapKeyRef, the downward API's pod IP, ``$(VAR)`` in args), and then:

* each pod's plan is feasible, its ``--only`` names exist and are enabled (load_plan refuses them otherwise);
* every pod plans the same stack, and every enabled unit of it runs in exactly one pod;
* every unit a pod waits on elsewhere is reached there through a Service that selects the pod running it, on a
  port that leads to the port the unit's own probe uses in that pod; the address variables a pod sets name
  Services and their ports; a pod never probes its own units through a Service (a Service sends traffic only to
  ready pods: the pod could never become ready); a worker registers by its pod IP when the controller is remote;
* readiness is ``qasup wait-ready --timeout 0`` (``/v1/status`` answers 200 whatever the services' state);
  liveness asks qasup (the read-only listener, bound where the kubelet reaches it, or a qasup command), never
  kills a pod before its readiness could pass, and tolerates a busy moment;
* terminationGracePeriodSeconds is above the stack's stop_budget; the GPUs a container requests are exactly
  the GPU ids its plan gives its units (inside a container the device plugin numbers them from 0);
* the controller is a single replica that is never doubled by a rolling update; every file is in the
  kustomization.

The checker runs on the shipped folder (no problem) and on mutated copies (each mutation is reported).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from supervisor.cli.config_verbs import plan_request
from supervisor.cli.main import build_parser
from supervisor.config.spec import Config
from supervisor.errors import ConfigError, Problem, Problems
from supervisor.plan.pipeline import PlanRequest, UsageError, inventory_stage, load_plan, load_stage, plan_stage
from supervisor.plan.result import Plan

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to parse the manifests: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "kubernetes"
IMAGE_STACK = "/workspace/"          # the image's stack folder (Dockerfile: WORKDIR /workspace): this checkout
READINESS = ["qasup", "wait-ready", "--timeout", "0"]
LIVE_PATHS = ("/v1/status", "/metrics", "/")
LOOPBACK = ("127.", "localhost", "0.0.0.0", "::1")
ADDR_VARS = ("FASTCHAT_CONTROLLER_ADDR", "TRITON_LLM_ADDR", "TRITON_LLM_GRPC_ADDR", "TRITON_EMBED_RERANK_ADDR",
             "RERANK_ADDR", "OCR_ADDR", "LLM_API_ADDR")
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
SAFE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # safe_load_all's loader, in C where PyYAML has libyaml
DEFAULT_GPU = {"index": 0, "name": "NVIDIA A100-SXM4-80GB", "memory_total_mib": 81920, "memory_free_mib": 81000,
               "compute_capability": "8.0"}


@dataclasses.dataclass
class Pod:
    where: str                          # "FILE: Deployment/NAME"
    doc: dict[str, Any]
    ip: str                             # what status.podIP gives this pod's containers here
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    args: list[str] = dataclasses.field(default_factory=list)
    plan: Plan | None = None
    gpus: int = 0
    http_port: str = ""                 # `up --http HOST:PORT`, where the kubelet reaches it ("": not there)

    @property
    def spec(self) -> dict[str, Any]:
        return self.doc["spec"]["template"]["spec"]

    @property
    def labels(self) -> dict[str, str]:
        return self.doc["spec"]["template"].get("metadata", {}).get("labels", {})

    @property
    def container(self) -> dict[str, Any]:
        return self.spec["containers"][0]


def load(folder: Path) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """(file, document) for every resource of the kustomization, and the problems of the folder itself."""
    probs: list[str] = []
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text())
    listed = list(kust.get("resources", []))
    for f in sorted(p.name for p in folder.glob("*.yaml")):
        if f != "kustomization.yaml" and f not in listed:
            probs.append(f"{f}: not in kustomization.yaml's resources: kubectl apply -k would leave it out")
    docs = [(f, d) for f in listed for d in yaml.load_all((folder / f).read_text(), Loader=SAFE) if d]
    return docs, probs


def container_env(pod: Pod, configmaps: dict[str, dict[str, str]], probs: list[str]) -> dict[str, str]:
    c, env = pod.container, {}
    for ref in c.get("envFrom", []):
        name = ref.get("configMapRef", {}).get("name")
        if name not in configmaps:
            probs.append(f"{pod.where}: envFrom names ConfigMap {name!r}, which is not in the manifests")
        env.update(configmaps.get(name, {}))
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = expand_k8s(str(e["value"]), env)
            continue
        src = e.get("valueFrom", {})
        if src.get("fieldRef", {}).get("fieldPath") == "status.podIP":
            env[e["name"]] = pod.ip
        elif "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            if ref["key"] not in configmaps.get(ref["name"], {}):
                probs.append(f"{pod.where}: env {e['name']}: no key {ref['key']!r} in ConfigMap {ref['name']!r}")
            env[e["name"]] = configmaps.get(ref["name"], {}).get(ref["key"], "")
        else:
            probs.append(f"{pod.where}: env {e['name']}: a source this check does not know: {src}")
    return env


def expand_k8s(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` in args and env values: replaced when VAR is defined, ``$$`` a literal ``$``."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and ")" in text[i:]:
            j = text.index(")", i)
            name = text[i + 2:j]
            out.append(env[name] if name in env else text[i:j + 1])
            i = j + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


Planner = Callable[[PlanRequest], Plan]
_CONFIGS: dict[tuple[Path | None, Path | None], tuple[Config, list[Problem]]] = {}


def cached_plan(request: PlanRequest) -> Plan:
    """load_plan's stages, with the stack's units read once (the mutations change manifests, not units)."""
    environ = request.environ or {}
    key = (request.config, request.cwd)
    if key not in _CONFIGS:
        first = Problems()
        _CONFIGS[key] = (load_stage(request, first), list(first.items))
    config, items = _CONFIGS[key]
    probs = Problems()
    probs.items.extend(items)
    return plan_stage(request, config, inventory_stage(request, config, environ), probs, environ)


def plan_pod(pod: Pod, gpu_class: dict[str, Any], probs: list[str], planner: Planner) -> None:
    """Plan the pod as ``qasup ARGS`` would in its container: qasup's parser, load_plan, the pod's env."""
    c = pod.container
    if c.get("command") not in (None, ["qasup"]):
        probs.append(f"{pod.where}: command {c['command']} replaces the image's entrypoint: qasup must be PID 1")
    args = [expand_k8s(str(a), pod.env) for a in c.get("args", [])]
    pod.args = args
    for a in args:
        if "$(" in a:
            probs.append(f"{pod.where}: args: {a!r} names a variable the container does not define")
    if not args or args[0] != "up":
        probs.append(f"{pod.where}: args must start with `up` (qasup up as PID 1), not {args[:1]}")
        return
    try:
        ns = build_parser().parse_args(args)
    except SystemExit:
        probs.append(f"{pod.where}: qasup refuses the args {args}")
        return
    if not (ns.only or ns.exclude or pod.env.get("QASUP_ONLY") or pod.env.get("QASUP_EXCEPT")):
        probs.append(f"{pod.where}: no --only: the pod would run the whole stack")
    if ns.http and not ns.http.rpartition(":")[0].startswith(("127.", "localhost", "[::1]")):
        pod.http_port = ns.http.rpartition(":")[2]
    limits = c.get("resources", {}).get("limits", {})
    requests = c.get("resources", {}).get("requests", {})
    pod.gpus = int(limits.get("nvidia.com/gpu", 0))
    if "nvidia.com/gpu" in requests and int(requests["nvidia.com/gpu"]) != pod.gpus:
        probs.append(f"{pod.where}: nvidia.com/gpu requests and limits differ (Kubernetes requires them equal)")
    request = plan_request(ns, check_paths=False)
    config = request.config
    if config is None or str(config).startswith(IMAGE_STACK):
        config = ROOT / (str(config)[len(IMAGE_STACK):] if config else "qasup.toml")
    gpus = request.gpus
    if gpus is None and "QASUP_GPUS" not in pod.env:   # the pod reads its GPUs through NVML: as many as it gets
        gpus = json.dumps([{**gpu_class, "index": i} for i in range(pod.gpus)]) if pod.gpus else "none"
    request = dataclasses.replace(request, config=config, gpus=gpus, environ=dict(pod.env), cwd=ROOT)
    try:
        pod.plan = planner(request)
    except (ConfigError, UsageError) as e:
        probs.append(f"{pod.where}: qasup {' '.join(args)}: {e}")
        return
    if not pod.plan.feasible:
        probs.append(f"{pod.where}: the plan is infeasible: {pod.plan.error}")


def targets(plan: Plan, unit: str) -> list[tuple[str, str, int]]:
    """(probe, host, port) of a unit's http and tcp checks, [ready] and [live], as this plan expanded them."""
    out = []
    r = plan.resolved[unit]
    for kind, checks in (("ready", r.ready), ("live", r.live)):
        if checks is None:
            continue
        if checks.http is not None:
            u = urlsplit(checks.http.url)
            out.append((f"{kind} http", u.hostname or "", u.port or 80))
        if checks.tcp is not None:
            out.append((f"{kind} tcp", checks.tcp[0], checks.tcp[1]))
    return out


def service_for(host: str, services: list[dict[str, Any]]) -> dict[str, Any] | None:
    for s in services:
        name = s["metadata"]["name"]
        if host == name or host.startswith(name + ".") and host.split(".")[2:3] in ([], ["svc"]):
            return s
    return None


def endpoint(host: str, port: int, pod: Pod, pods: list[Pod], services: list[dict[str, Any]]) \
        -> tuple[str, int | None] | str:
    """Where ``host:port`` leads from ``pod``: (the pod it reaches, its container port), or why it leads nowhere."""
    if host.startswith((pod.ip, *LOOPBACK)):
        return pod.where, port
    svc = service_for(host, services)
    if svc is None:
        return f"no Service is named {host!r}"
    behind = [p for p in pods if selects(svc, p)]
    if len(behind) != 1:
        return f"Service/{host} selects {len(behind)} of the pods"
    tp = target_port(svc, port, behind[0])
    if tp is None:
        return f"Service/{host} has no port {port}"
    if tp < 0:
        return f"Service/{host}'s port {port} has a targetPort that names no port of {behind[0].where}"
    return behind[0].where, tp


def selects(service: dict[str, Any], pod: Pod) -> bool:
    sel = service["spec"].get("selector", {})
    return bool(sel) and all(pod.labels.get(k) == v for k, v in sel.items())


def target_port(service: dict[str, Any], port: int, pod: Pod) -> int | None:
    """The container port a Service port leads to in ``pod`` (None: the Service has no such port)."""
    for p in service["spec"].get("ports", []):
        if p["port"] == port:
            tp = p.get("targetPort", p["port"])
            if isinstance(tp, int):
                return tp
            named = {cp.get("name"): cp["containerPort"] for cp in pod.container.get("ports", [])}
            return named.get(tp, -1)
    return None


def check_probes(pod: Pod, stop_budget: float, probs: list[str]) -> None:
    c, plan = pod.container, pod.plan
    assert plan is not None
    ready = c.get("readinessProbe", {})
    cmd = ready.get("exec", {}).get("command")
    if cmd is None or cmd[:4] != READINESS or any(n not in plan.runs_here for n in cmd[4:]):
        probs.append(f"{pod.where}: readinessProbe must be exec {READINESS} (a check of this pod's units: "
                     f"/v1/status answers 200 whatever their state), not {ready}")
    live = c.get("livenessProbe")
    local_ready = max([plan.resolved[n].ready.timeout for n in plan.runs_here] or [0.0])
    if live is None:
        probs.append(f"{pod.where}: no livenessProbe: a wedged qasup would never be restarted")
        return
    if "httpGet" in live:
        port = live["httpGet"].get("port")
        named = {cp.get("name"): cp["containerPort"] for cp in c.get("ports", [])}
        port = named.get(port, port)
        if live["httpGet"].get("path") not in LIVE_PATHS or str(port) != pod.http_port:
            probs.append(f"{pod.where}: livenessProbe httpGet {live['httpGet']} is not qasup's read-only listener "
                         f"(`up --http 0.0.0.0:PORT`, where the kubelet reaches it; paths {LIVE_PATHS})")
    elif live.get("exec", {}).get("command", [""])[0] != "qasup" and "qasup" not in str(live.get("exec")):
        probs.append(f"{pod.where}: livenessProbe {live} does not ask qasup")
    elif "wait-ready" in str(live.get("exec")):
        start = c.get("startupProbe")
        grace = (start["periodSeconds"] * start.get("failureThreshold", 3) if start
                 else live.get("initialDelaySeconds", 0))
        if grace < local_ready:
            probs.append(f"{pod.where}: livenessProbe is a readiness check that may fail for {grace}s after the "
                         f"start, before the units' [ready] timeout ({local_ready:g}s) lets them be ready")
    for name, probe in (("readinessProbe", ready), ("livenessProbe", live)):
        if probe.get("timeoutSeconds", 1) < 2:
            probs.append(f"{pod.where}: {name} timeoutSeconds {probe.get('timeoutSeconds', 1)}: the qasup CLI "
                         f"needs more than 1 s on a busy node")
    if live.get("periodSeconds", 10) * live.get("failureThreshold", 3) < 30:
        probs.append(f"{pod.where}: livenessProbe gives up within 30 s: a busy qasup would be killed")
    grace_period = pod.spec.get("terminationGracePeriodSeconds", 30)
    if grace_period <= stop_budget:
        probs.append(f"{pod.where}: terminationGracePeriodSeconds {grace_period} is not above the stack's "
                     f"stop_budget ({stop_budget:g}s): the kubelet's SIGKILL would cut the ordered stop short")


def check_gpus(pod: Pod, probs: list[str]) -> None:
    assert pod.plan is not None
    used = sorted({i for n in pod.plan.runs_here for i in pod.plan.services[n].gpu_ids})
    if used != list(range(pod.gpus)):
        probs.append(f"{pod.where}: requests nvidia.com/gpu {pod.gpus}, but its plan gives its units GPU ids "
                     f"{used} (inside the container the device plugin's GPUs are 0..{max(pod.gpus - 1, 0)})")


def check(folder: Path, planner: Planner = load_plan) -> list[str]:
    docs, probs = load(folder)
    configmaps = {d["metadata"]["name"]: {k: str(v) for k, v in d.get("data", {}).items()}
                  for _, d in docs if d["kind"] == "ConfigMap"}
    services = [d for _, d in docs if d["kind"] == "Service"]
    pods = [Pod(f"{f}: {d['kind']}/{d['metadata']['name']}", d, f"10.244.{i}.7")
            for i, (f, d) in enumerate(docs) if d["kind"] in WORKLOADS]
    gpu_class = dict(DEFAULT_GPU)
    for cm in configmaps.values():
        if "WORKER_GPUS" in cm:
            gpu_class = json.loads(cm["WORKER_GPUS"])[0]
    for pod in pods:
        if len(pod.spec["containers"]) != 1:
            probs.append(f"{pod.where}: one container per pod: qasup supervises the pod's services itself")
        pod.env = container_env(pod, configmaps, probs)
        plan_pod(pod, gpu_class, probs, planner)
    planned = [p for p in pods if p.plan is not None]
    runs: dict[str, list[Pod]] = {}
    for pod in planned:
        assert pod.plan is not None
        for n in pod.plan.runs_here:
            runs.setdefault(n, []).append(pod)
    if planned:
        whole = planned[0].plan
        assert whole is not None
        stack = set(whole.runs_here) | set(whole.waited_on) | set(whole.not_run_here)
        for pod in planned[1:]:
            assert pod.plan is not None
            other = set(pod.plan.runs_here) | set(pod.plan.waited_on) | set(pod.plan.not_run_here)
            if other != stack:
                probs.append(f"{pod.where}: plans the units {sorted(other)}, {planned[0].where} plans "
                             f"{sorted(stack)}: the pods' plan inputs differ")
        for n in sorted(stack):
            where = [p.where for p in runs.get(n, [])]
            if len(where) != 1:
                probs.append(f"unit {n} runs in {len(where)} pods ({', '.join(where) or 'none'}): exactly one")
        check_stack_wide(planned, pods, runs, services, probs)
    for s in services:
        if not any(selects(s, p) for p in pods):
            probs.append(f"Service/{s['metadata']['name']}: selects no pod of the manifests")
    return probs


def check_stack_wide(planned: list[Pod], pods: list[Pod], runs: dict[str, list[Pod]],
                     services: list[dict[str, Any]], probs: list[str]) -> None:
    for pod in planned:
        plan = pod.plan
        assert plan is not None
        check_probes(pod, plan.config.stack.stop_budget, probs)
        check_gpus(pod, probs)
        own = (pod.ip, *LOOPBACK)
        for n in plan.runs_here:   # its own units: never probed through a Service that selects this very pod
            for probe, host, port in targets(plan, n):
                svc = service_for(host, services)
                if host.startswith(own) or (svc is not None and not selects(svc, pod)):
                    continue   # itself, or another pod's service (a worker's check at the controller)
                probs.append(f"{pod.where}: {n}'s {probe} probe goes to {host}:{port}, " + (
                    f"Service/{host}, which selects this pod: a Service sends traffic only to ready pods, so this "
                    f"pod could never become ready" if svc is not None else "neither this pod nor a Service"))
            wa = [a for i, a in enumerate(plan.resolved[n].argv) if plan.resolved[n].argv[i - 1] == "--worker-address"]
            if wa and set(plan.waited_on) & set(plan.services[n].requires) and urlsplit(wa[0]).hostname != pod.ip:
                probs.append(f"{pod.where}: {n} registers as {wa[0]} with a controller in another pod: set "
                             f"FASTCHAT_WORKER_HOST from the downward API (fieldRef status.podIP)")
        for n in plan.waited_on:
            runners = runs.get(n, [])
            if len(runners) != 1:
                continue   # reported above
            runner = runners[0]
            assert runner.plan is not None
            there = {probe: (host, port) for probe, host, port in targets(runner.plan, n)}
            for probe, host, port in targets(plan, n):
                got = endpoint(host, port, pod, pods, services)
                want = endpoint(*there[probe], runner, pods, services) if probe in there else "nothing"
                if isinstance(got, str):
                    probs.append(f"{pod.where}: waits on {n} ({probe} {host}:{port}, {n} runs in {runner.where}), "
                                 f"but {got}")
                elif got != want:
                    there_to = f"leads nowhere: {want}" if isinstance(want, str) else f"reaches port {want[1]} of {want[0]}"
                    probs.append(f"{pod.where}: {n}'s {probe} probe reaches port {got[1]} of {got[0]} from here, "
                                 f"but in {runner.where}, where {n} runs, it {there_to}")
        for var in ADDR_VARS:
            value = pod.env.get(var)
            if value and not value.startswith(own):
                host, _, port = value.rpartition(":")
                svc = service_for(host, services)
                if svc is None or not any(str(p["port"]) == port for p in svc["spec"].get("ports", [])):
                    probs.append(f"{pod.where}: {var}={value}: no Service {host!r} with port {port}")
        if "fastchat-controller" in plan.runs_here:
            strategy = pod.doc["spec"].get("strategy", {}).get("type", "RollingUpdate")
            if pod.doc["spec"].get("replicas", 1) != 1 or strategy != "Recreate":
                probs.append(f"{pod.where}: runs fastchat-controller: replicas 1 and strategy Recreate (a second "
                             f"controller, even during a rollout, would split the workers' registrations)")


# ------------------------------------------------------------------------------------------------ the tests

def test_shipped_manifests_agree_with_the_units() -> None:
    assert check(EXAMPLE) == []


def test_the_cached_planner_plans_as_load_plan() -> None:
    """The mutation tests plan with the units read once: the same plans as load_plan's."""
    seen: list[tuple[PlanRequest, Plan]] = []

    def recording(request: PlanRequest) -> Plan:
        plan = load_plan(request)
        seen.append((request, plan))
        return plan

    assert check(EXAMPLE, recording) == []
    assert len(seen) == 3
    for request, plan in seen:
        assert cached_plan(request).to_json() == plan.to_json()


def test_every_unit_of_the_plan_is_placed_as_the_readme_says() -> None:
    """The split the README describes: the controller alone, the workers (scaled by replicas), the API pod."""
    docs, _ = load(EXAMPLE)
    pods = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "Deployment"}
    assert set(pods) == {"fastchat-controller", "vllm-worker", "qanything-api"}
    assert pods["vllm-worker"]["spec"]["replicas"] >= 2
    only = {n: d["spec"]["template"]["spec"]["containers"][0]["args"][2] for n, d in pods.items()}
    assert only == {"fastchat-controller": "fastchat-controller", "vllm-worker": "vllm-worker",
                    "qanything-api": "triton-embed-rerank,rerank,ocr,fastchat-openai-api,sanic"}


def _edit(path: Path, kind: str, name: str, change: Callable[[dict[str, Any]], None]) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, (path, kind, name)
    change(hits[0])
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def _c(d: dict[str, Any]) -> dict[str, Any]:
    return d["spec"]["template"]["spec"]["containers"][0]


def _env(d: dict[str, Any], name: str, value: str | None) -> None:
    env = [e for e in _c(d).get("env", []) if e["name"] != name]
    _c(d)["env"] = env + ([{"name": name, "value": value}] if value is not None else [])


def _set_only(value: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: _c(d)["args"].__setitem__(2, value)


MUTATIONS: dict[str, tuple[str, str, str, Callable[[dict[str, Any]], None], str]] = {
    "unknown --only name": ("vllm-worker.yaml", "Deployment", "vllm-worker", _set_only("vllm-workr"),
                            "vllm-workr"),
    "a unit in no pod": ("api.yaml", "Deployment", "qanything-api",
                         _set_only("triton-embed-rerank,rerank,fastchat-openai-api,sanic"), "unit ocr runs in 0 pods"),
    "a unit in two pods": ("controller.yaml", "Deployment", "fastchat-controller",
                           _set_only("fastchat-controller,rerank"), "unit rerank runs in 2 pods"),
    "no Service for the address": ("vllm-worker.yaml", "Deployment", "vllm-worker",
                                   lambda d: _env(d, "FASTCHAT_CONTROLLER_ADDR", "fastchat-ctl:7800"),
                                   "no Service is named 'fastchat-ctl'"),
    "Service port differs": ("controller.yaml", "Service", "fastchat-controller",
                             lambda d: d["spec"]["ports"][0].__setitem__("port", 7900), "has no port 7800"),
    "Service leads to another port": ("controller.yaml", "Service", "fastchat-controller",
                                      lambda d: d["spec"]["ports"][0].__setitem__("targetPort", 9100),
                                      "it reaches port 7800 of controller.yaml"),
    "Service selects another pod": ("vllm-worker.yaml", "Service", "vllm-worker",
                                    lambda d: d["spec"]["selector"].__setitem__("app.kubernetes.io/component", "api"),
                                    "names no port of api.yaml: Deployment/qanything-api"),
    "own unit probed through its Service": ("controller.yaml", "Deployment", "fastchat-controller",
                                            lambda d: _env(d, "FASTCHAT_CONTROLLER_ADDR", "fastchat-controller:7800"),
                                            "could never become ready"),
    "worker registers as 0.0.0.0": ("vllm-worker.yaml", "Deployment", "vllm-worker",
                                    lambda d: _env(d, "FASTCHAT_WORKER_HOST", None), "fieldRef status.podIP"),
    "grace period within the stop budget": ("api.yaml", "Deployment", "qanything-api",
                                            lambda d: d["spec"]["template"]["spec"].__setitem__(
                                                "terminationGracePeriodSeconds", 60), "stop_budget (60s)"),
    "GPU request differs from the plan": ("vllm-worker.yaml", "Deployment", "vllm-worker",
                                          lambda d: _c(d).__setitem__("resources", {
                                              "requests": {"nvidia.com/gpu": 2}, "limits": {"nvidia.com/gpu": 2}}),
                                          "requests nvidia.com/gpu 2, but its plan gives its units GPU ids [0]"),
    "GPU requests and limits differ": ("api.yaml", "Deployment", "qanything-api",
                                       lambda d: _c(d)["resources"].__setitem__("requests", {"nvidia.com/gpu": 2}),
                                       "requests and limits differ"),
    "a unit the plan disabled": ("controller.yaml", "Deployment", "fastchat-controller",
                                 _set_only("fastchat-controller,llm-relay"), "'llm-relay' is disabled in this plan"),
    "tensor parallel 2 on one GPU": ("vllm-worker.yaml", "Deployment", "vllm-worker",
                                     lambda d: _c(d)["args"].__setitem__(6, "0,1"), "GPU ids [0, 1]"),
    "readiness by /v1/status": ("api.yaml", "Deployment", "qanything-api",
                                lambda d: _c(d).__setitem__("readinessProbe", {"httpGet": {"path": "/v1/status",
                                                                                           "port": "qasup"}}),
                                "answers 200 whatever their state"),
    "liveness before readiness could pass": ("vllm-worker.yaml", "Deployment", "vllm-worker",
                                             lambda d: _c(d).__setitem__("livenessProbe", {
                                                 "exec": {"command": READINESS}, "periodSeconds": 20,
                                                 "timeoutSeconds": 10, "initialDelaySeconds": 30}),
                                             "before the units' [ready] timeout (300s)"),
    "liveness on a listener the kubelet cannot reach": ("controller.yaml", "Deployment", "fastchat-controller",
                                                        lambda d: _c(d)["args"].__setitem__(4, "127.0.0.1:9100"),
                                                        "not qasup's read-only listener"),
    "two controllers": ("controller.yaml", "Deployment", "fastchat-controller",
                        lambda d: d["spec"].__setitem__("replicas", 2), "replicas 1 and strategy Recreate"),
    "another model in one pod": ("api.yaml", "Deployment", "qanything-api",
                                 lambda d: _c(d)["args"].__setitem__(8, "hf"), "the pods' plan inputs differ"),
    "entrypoint replaced": ("api.yaml", "Deployment", "qanything-api",
                            lambda d: _c(d).__setitem__("command", ["python3"]), "qasup must be PID 1"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_a_broken_manifest_is_reported(name: str, tmp_path: Path) -> None:
    file, kind, obj, change, expected = MUTATIONS[name]
    folder = tmp_path / "kubernetes"
    shutil.copytree(EXAMPLE, folder)
    _edit(folder / file, kind, obj, change)
    probs = check(folder, cached_plan)
    assert any(expected in p for p in probs), "\n".join(probs) or "no problem reported"


def test_a_file_left_out_of_the_kustomization_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "kubernetes"
    shutil.copytree(EXAMPLE, folder)
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text())
    kust["resources"].remove("models-pvc.yaml")
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kust))
    assert check(folder, cached_plan) == ["models-pvc.yaml: not in kustomization.yaml's resources: kubectl apply -k would "
                             "leave it out"]


def test_k8s_args_expansion() -> None:
    env = {"A": "x", "B": "y"}
    assert expand_k8s("$(A)-$(B)-$(C)-$$(A)", env) == "x-y-$(C)-$(A)"
    assert copy.deepcopy(env) == env
