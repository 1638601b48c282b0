"""Every container command the chart runs is a real entrypoint, parsed with that entrypoint's own parser.

Nothing runs: the workflow steps and the helm test go through the Typer app's click commands, the model servers
through their argparse parsers (``build_parser``), the MLflow server and migration through MLflow's click group,
each with the exact rendered arguments (Argo placeholders replaced by the values the templates declare). A rendered
flag that the entrypoint does not know fails here, not in a pod. The environment the chart gives the pods is checked
against :class:`pipelines.config.Settings` the same way, and every address a pod is given names a rendered Service.
"""

from __future__ import annotations

import argparse
import csv
import functools
import itertools
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest

from pipelines.config import Settings
from tests.chart.conftest import NAMESPACE, Rendered, render, rendered, values_of

# Argo parameters with no declared value anywhere take a realistic one (dates must parse as the CLI parses them)
REALISTIC = {"as-of": "2024-01-31", "month": "month_000", "users": "7043", "months": "2", "seed": "42",
             "months-dir": "/data/months", "drift": "watch_hours_30d=-0.4"}  # fmt: skip
PLACEHOLDER = re.compile(r"\{\{\s*inputs\.parameters\.([\w-]+)\s*\}\}")
KUBELET_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
FAKE_DB_URL = "postgresql://streamflow:secret@db.example:5432/{db}?sslmode=disable"

try:  # Typer 0.2x runs on its own copy of click: its errors are not click's
    from typer._click.exceptions import UsageError as _TyperUsageError

    USAGE_ERRORS: tuple[type[Exception], ...] = (click.UsageError, _TyperUsageError)
except ImportError:
    USAGE_ERRORS = (click.UsageError,)


@dataclass(frozen=True)
class Run:
    """One container command with concrete arguments (one combination of its Argo parameters)."""

    where: str
    command: tuple[str, ...]
    args: tuple[str, ...]
    container: dict[str, Any] = field(hash=False, compare=False)
    obj: dict[str, Any] = field(hash=False, compare=False)

    @property
    def argv(self) -> list[str]:
        return [*self.command, *self.args]


# ------------------------------------------------------------------------------------------------ collecting


def _containers(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, container) for every container of a rendered object that runs one."""
    kind, name = obj["kind"], obj["metadata"]["name"]
    if kind in ("Deployment", "StatefulSet", "Job"):
        pod = obj["spec"]["template"]["spec"]
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            yield f"{kind} {name} container {c['name']}", c
    elif kind == "Pod":
        for c in obj["spec"]["containers"]:
            yield f"Pod {name} container {c['name']}", c
    elif kind == "InferenceService":
        for part in ("predictor", "transformer"):
            for c in obj["spec"].get(part, {}).get("containers", []):
                yield f"InferenceService {name} {part}", c
    elif kind == "WorkflowTemplate":
        for t in obj["spec"]["templates"]:
            if "container" in t:
                yield f"WorkflowTemplate {name} template {t['name']}", t["container"]


def _steps(template: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for group in template.get("steps") or []:
        yield from group
    yield from (template.get("dag") or {}).get("tasks") or []


def _param_values(r: Rendered, wt: dict[str, Any], template: str, param: str) -> set[str]:
    """Every value a template's input parameter can take: the WorkflowTemplate's (and CronWorkflow's) arguments
    when it is the entrypoint, the template's own default, and what each calling step passes (resolved in turn)."""
    name, spec = wt["metadata"]["name"], wt["spec"]
    found: set[str] = set()
    if template == spec.get("entrypoint"):
        argument_lists = [spec.get("arguments", {}).get("parameters", [])]
        argument_lists += [
            cron["spec"]["workflowSpec"].get("arguments", {}).get("parameters", [])
            for cron in r.of_kind("CronWorkflow")
            if cron["spec"]["workflowSpec"].get("workflowTemplateRef", {}).get("name") == name
        ]
        found |= {str(p["value"]) for params in argument_lists for p in params if p["name"] == param and "value" in p}
    own = next(t for t in spec["templates"] if t["name"] == template)
    found |= {
        str(p.get("value", p.get("default")))
        for p in own.get("inputs", {}).get("parameters", [])
        if p["name"] == param and ("value" in p or "default" in p)
    }
    for caller in r.of_kind("WorkflowTemplate"):
        for t in caller["spec"]["templates"]:
            for step in _steps(t):
                ref = step.get("templateRef")
                target = (ref["name"], ref["template"]) if ref else (caller["metadata"]["name"], step.get("template"))
                if target != (name, template):
                    continue
                for arg in step.get("arguments", {}).get("parameters", []):
                    if arg["name"] == param:
                        found |= _expand(r, caller, t["name"], str(arg["value"]))
    return found


def _expand(r: Rendered, wt: dict[str, Any], template: str, text: str) -> set[str]:
    """``text`` with each ``{{inputs.parameters.X}}`` replaced, one string per combination of values."""
    names = sorted(set(PLACEHOLDER.findall(text)))
    choices = []
    for param in names:
        values = _param_values(r, wt, template, param)
        if not values:
            assert param in REALISTIC, f"{wt['metadata']['name']}/{template}: no value for parameter {param!r}"
            values = {REALISTIC[param]}
        choices.append(sorted(values))
    out = set()
    for combo in itertools.product(*choices):
        chosen = dict(zip(names, combo, strict=True))
        out.add(PLACEHOLDER.sub(lambda m, chosen=chosen: chosen[m.group(1)], text))
    return out


def runs(r: Rendered) -> list[Run]:
    """Every container of the project image with concrete arguments."""
    found = []
    for obj in r.objects:
        for where, c in _containers(obj):
            if not c["image"].split("@")[0].split(":")[0].endswith("streamflow"):
                continue  # postgres, pushgateway: upstream images with their own entrypoints
            command, args = tuple(c.get("command") or ()), list(c.get("args") or ())
            if obj["kind"] != "WorkflowTemplate":
                found.append(Run(where, command, tuple(args), c, obj))
                continue
            template = where.rsplit(" ", 1)[1]
            per_arg = [sorted(_expand(r, obj, template, a)) for a in args]
            for combo in itertools.product(*per_arg):
                assert not any("{{" in a for a in combo), f"{where}: unresolved placeholder in {combo}"
                found.append(Run(where, command, combo, c, obj))
    return found


@functools.cache
def runs_of(scenario: str) -> tuple[Run, ...]:
    return tuple(runs(rendered(scenario)))


@functools.cache
def upgrade_render() -> Rendered:
    return render(is_upgrade=True)


def family(run: Run) -> str:
    if run.command == ("streamflow",):
        return "streamflow"
    if run.command[:2] == ("python", "-m") and len(run.command) == 3:
        return run.command[2]
    if run.command[:1] == ("mlflow",):
        return "mlflow"
    return "unknown"


# ------------------------------------------------------------------------------------------------ the parsers


def parse_click(group: Any, prog: str, argv: list[str]) -> tuple[list[str], Any]:
    """Parse argv the way click would before running: down the groups to the leaf, whose context is returned.
    An unknown command, option or extra argument raises a UsageError (NoSuchOption, BadParameter…)."""
    ctx = group.make_context(prog, list(argv), resilient_parsing=False)
    path: list[str] = []
    command = group
    while hasattr(command, "resolve_command"):  # a group (click's, or the copy of click that Typer 0.2x ships)
        # click 8.2 keeps the subcommand's name in _protected_args (protected_args is deprecated); older: the latter
        protected = ctx.__dict__.get("_protected_args")
        if protected is None:
            protected = getattr(ctx, "protected_args", [])
        name, command, rest = command.resolve_command(ctx, [*protected, *ctx.args])
        assert command is not None and name is not None
        path.append(name)
        ctx = command.make_context(name, rest, parent=ctx, resilient_parsing=False)
    return path, ctx


@functools.cache
def _streamflow_cli() -> Any:
    import typer

    from pipelines.cli import app

    return typer.main.get_command(app)


def parse_streamflow(args: list[str] | tuple[str, ...]) -> tuple[list[str], Any]:
    return parse_click(_streamflow_cli(), "streamflow", list(args))


def parse_server(module: str, args: list[str] | tuple[str, ...], settings: Settings | None = None):
    """``build_parser(settings).parse_args(args)`` of model_server.predictor / model_server.transformer."""
    import importlib

    parser: argparse.ArgumentParser = importlib.import_module(module).build_parser(settings or Settings())
    return parser.parse_args(list(args))


@functools.cache
def _mlflow_cli() -> click.Group:
    from mlflow.cli import cli

    return cli


def parse_mlflow(args: list[str] | tuple[str, ...]) -> tuple[list[str], Any]:
    return parse_click(_mlflow_cli(), "mlflow", list(args))


def _env_of(run: Run, r: Rendered) -> dict[str, str]:
    """The container's environment as the kubelet builds it (secrets as fake values of the right kind)."""
    env: dict[str, str] = {}
    for source in run.container.get("envFrom") or []:
        env |= r.named("ConfigMap", source["configMapRef"]["name"])["data"]
    for item in run.container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            key = item["valueFrom"]["secretKeyRef"]["key"]
            env[item["name"]] = FAKE_DB_URL.format(db=key.removesuffix("-url")) if key.endswith("url") else "x"
    return env


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    import os

    for name in list(os.environ):
        if name.upper().startswith("STREAMFLOW_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


# ------------------------------------------------------------------------------------------------ every command parses


def test_every_project_container_has_a_known_entrypoint(scenario: str) -> None:
    unknown = [f"{r.where}: {r.argv}" for r in runs_of(scenario) if family(r) == "unknown"]
    assert not unknown, f"[{scenario}] containers of the project image with no parser here:\n" + "\n".join(unknown)
    families = {family(r) for r in runs_of(scenario)}
    values = values_of(scenario)
    expected = {"model_server.predictor", "model_server.transformer", "mlflow", "streamflow"}
    assert families == expected, f"[{scenario}] entrypoints: {families}"
    leaves = {" ".join(parse_streamflow(r.args)[0]) for r in runs_of(scenario) if family(r) == "streamflow"}
    wanted = {"smoke"} | (
        {"data generate", "ingest", "snapshot", "features apply", "features materialize", "train", "promote", "drift",
         "monthly", "score"} if values["workflows"]["enabled"] else set()
    )  # fmt: skip
    assert leaves == wanted, f"[{scenario}] streamflow commands rendered: {sorted(leaves)}"


def test_streamflow_commands_parse(scenario: str) -> None:
    from pipelines.months import parse_as_of

    checked = 0
    for run in runs_of(scenario):
        if family(run) != "streamflow":
            continue
        try:
            _, ctx = parse_streamflow(run.args)
        except USAGE_ERRORS as err:
            pytest.fail(f"[{scenario}] {run.where}: `streamflow {' '.join(run.args)}` does not parse: {err}")
        for name, value in ctx.params.items():
            if "as_of" in name and value is not None:
                parse_as_of(value)  # the command's own date parsing (InvalidInput on a bad date)
            if isinstance(value, Path) and run.obj["kind"] == "WorkflowTemplate":
                assert value.is_absolute() and value.parts[1] == "data", f"{run.where}: {name}={value} not under /data"
        checked += 1
    assert checked, f"[{scenario}] no streamflow command rendered"


def test_model_servers_parse_to_what_the_chart_means(scenario: str, monkeypatch: pytest.MonkeyPatch) -> None:
    r, values = rendered(scenario), values_of(scenario)
    servers = [run for run in runs_of(scenario) if family(run).startswith("model_server.")]
    isvcs = r.of_kind("InferenceService")
    assert len(servers) == 2 * len(isvcs) > 0
    for run in servers:
        settings = _settings_from(_env_of(run, r), monkeypatch)
        try:
            ns = parse_server(family(run), run.args, settings)
        except SystemExit as exit_:
            pytest.fail(f"[{scenario}] {run.where}: `{' '.join(run.argv)}` does not parse (exit {exit_.code})")
        isvc = run.obj["metadata"]["name"]
        ports = {p["name"]: p["containerPort"] for p in run.container["ports"]}
        meant = {"http_port": ports["http1"], "grpc_port": ports["h2c"], "host": "0.0.0.0",
                 "model_name": values["serving"]["modelName"]}  # fmt: skip
        assert (ports["http1"], ports["h2c"]) == (8080, 8081), f"{run.where}: KServe's ports are 8080/8081"
        if run.where.endswith("predictor"):
            meant |= {"alias": run.obj["metadata"]["labels"]["streamflow.io/alias"],
                      "poll_seconds": float(values["serving"]["pollSeconds"])}  # fmt: skip
        else:
            meant |= {"predictor_host": f"{isvc}-predictor.{NAMESPACE}", "predictor_protocol": "v2",
                      "max_batch_size": values["serving"]["transformer"]["maxBatchSize"]}  # fmt: skip
        got = {key: getattr(ns, key) for key in meant}
        assert got == meant, f"[{scenario}] {run.where} parses to {got}, the chart means {meant}"
    aliases = sorted(run.obj["metadata"]["labels"]["streamflow.io/alias"] for run in servers)
    want = ["production"] * 2 + (["challenger"] * 2 if values["challenger"]["enabled"] else [])
    assert sorted(aliases) == sorted(want)


def test_mlflow_server_parses_with_its_env(scenario: str, monkeypatch: pytest.MonkeyPatch) -> None:
    r = rendered(scenario)
    (run,) = [run for run in runs_of(scenario) if run.command == ("mlflow", "server")]
    env = _env_of(run, r)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        path, ctx = parse_mlflow([*run.command[1:], *run.args])
    except click.UsageError as err:
        pytest.fail(f"[{scenario}] {run.where}: `{' '.join(run.argv)}` does not parse: {err}")
    assert path == ["server"]
    # the Secret-backed variable is the option's own environment variable: the URL never appears in the manifest
    assert ctx.params["backend_store_uri"] == env["MLFLOW_BACKEND_STORE_URI"] == FAKE_DB_URL.format(db="mlflow")
    assert ctx.params["host"] == "0.0.0.0"
    port = {p["name"]: p["containerPort"] for p in run.container["ports"]}["http"]
    assert ctx.params["port"] == port == 5000
    assert ctx.params["artifacts_destination"], "artifacts are served by the server from its volume"
    mounts = [m["mountPath"] for m in run.container["volumeMounts"]]
    assert any(ctx.params["artifacts_destination"].startswith(m.rstrip("/") + "/") for m in mounts), (
        f"--artifacts-destination {ctx.params['artifacts_destination']} is on no volume ({mounts})"
    )
    svc = r.named("Service", _mlflow_service(r))
    allowed = ctx.params["allowed_hosts"].split(",")
    for host in (svc["metadata"]["name"], f"{svc['metadata']['name']}.{NAMESPACE}", f"{svc['metadata']['name']}:*"):
        assert host in allowed, f"MLflow answers 403 to Host {host!r}: not in --allowed-hosts"


def test_mlflow_migration_parses_on_upgrade(monkeypatch: pytest.MonkeyPatch) -> None:
    r = upgrade_render()
    (run,) = [run for run in runs(r) if run.command[:2] == ("mlflow", "db")]
    env = _env_of(run, r)
    undefined = [v for v in KUBELET_VAR.findall(" ".join(run.argv)) if v not in env]
    assert not undefined, f"{run.where}: the kubelet expands only variables of the container's env: {undefined}"
    argv = [KUBELET_VAR.sub(lambda m: env[m.group(1)], a) for a in run.argv]
    path, ctx = parse_mlflow(argv[1:])
    assert path == ["db", "upgrade"]
    assert ctx.params["url"] == FAKE_DB_URL.format(db="mlflow")
    assert not any(run.command[:2] == ("mlflow", "db") for run in runs_of("default")), "migration only on upgrade"


# ------------------------------------------------------------------------------------------------ a typo must fail


def _one(scenario: str, where_end: str) -> Run:
    return next(run for run in runs_of(scenario) if run.where.endswith(where_end))


def _misspell(args: tuple[str, ...], flag: str, typo: str) -> list[str]:
    assert flag in args, f"{flag} not rendered in {args}"
    return [typo if a == flag else a for a in args]


def test_a_misspelled_streamflow_flag_fails() -> None:
    run = _one("default", "template ingest")
    parse_streamflow(run.args)
    with pytest.raises(USAGE_ERRORS, match="as_of"):
        parse_streamflow(_misspell(run.args, "--as-of", "--as_of"))
    with pytest.raises(USAGE_ERRORS):
        parse_streamflow(["ingets", *run.args[1:]])
    smoke = _one("default", "container smoke")
    with pytest.raises(USAGE_ERRORS):
        parse_streamflow(_misspell(smoke.args, "--user-id", "--user_id"))


@pytest.mark.parametrize(
    ("module", "flag", "typo"),
    [("model_server.predictor", "--http_port", "--htpp_port"), ("model_server.predictor", "--alias", "--alais"),
     ("model_server.transformer", "--predictor_host", "--predictor-host"),
     ("model_server.transformer", "--max_batch_size", "--max_batch")],
)  # fmt: skip
def test_a_misspelled_server_flag_fails(module: str, flag: str, typo: str) -> None:
    run = next(run for run in runs_of("default") if family(run) == module)
    parse_server(module, run.args)
    with pytest.raises(SystemExit) as exit_:
        parse_server(module, _misspell(run.args, flag, typo))
    assert exit_.value.code == 2


def test_a_misspelled_mlflow_flag_fails() -> None:
    run = next(run for run in runs_of("default") if run.command == ("mlflow", "server"))
    parse_mlflow(["server", *run.args])
    with pytest.raises(click.UsageError, match="allowed-host"):
        parse_mlflow(["server", *_misspell(run.args, "--allowed-hosts", "--allowed-host")])
    with pytest.raises(click.UsageError):
        parse_mlflow(["db", "upgrad", "postgresql://x"])


# ------------------------------------------------------------------------------------------------ env vars ↔ Settings


def _streamflow_env_names(scenario: str) -> dict[str, str]:
    """Every STREAMFLOW_* name the chart sets → where."""
    r = rendered(scenario)
    names = {}
    for cm in r.of_kind("ConfigMap"):
        for key in cm.get("data") or {}:
            if key.upper().startswith("STREAMFLOW_"):
                names[key] = f"ConfigMap {cm['metadata']['name']}"
    for obj in r.objects:
        for where, c in _containers(obj):
            for item in c.get("env") or []:
                if item["name"].upper().startswith("STREAMFLOW_"):
                    names[item["name"]] = where
    return names


def test_every_streamflow_env_var_is_a_settings_field(scenario: str) -> None:
    names = _streamflow_env_names(scenario)
    assert names
    unknown = {
        n: w for n, w in names.items() if n.upper().removeprefix("STREAMFLOW_").lower() not in Settings.model_fields
    }
    assert not unknown, f"[{scenario}] set by the chart, read by nothing (Settings ignores extra vars): {unknown}"


def _needs(run: Run, values: dict[str, Any]) -> set[str]:
    if run.obj["kind"] == "WorkflowTemplate":
        return {"home", "db_url", "mlflow_tracking_uri"} | (
            {"pushgateway_url"} if values["pushgateway"]["enabled"] else set()
        )
    if family(run) == "model_server.transformer":
        return {"db_url", "serve_host"}
    if family(run) == "model_server.predictor":
        return {"mlflow_tracking_uri", "serve_host"}
    if run.obj["kind"] == "Pod":  # the helm test reads the production version from the registry
        return {"mlflow_tracking_uri"}
    return set()


def test_every_pod_gets_the_settings_it_needs(scenario: str, monkeypatch: pytest.MonkeyPatch) -> None:
    r, values = rendered(scenario), values_of(scenario)
    for run in runs_of(scenario):
        env = _env_of(run, r)
        given = {n.upper().removeprefix("STREAMFLOW_").lower() for n in env if n.upper().startswith("STREAMFLOW_")}
        if "serve_host" in _needs(run, values) and "--host" in run.args:
            given.add("serve_host")  # the servers' --host wins over STREAMFLOW_SERVE_HOST
        missing = _needs(run, values) - given
        assert not missing, f"[{scenario}] {run.where} lacks STREAMFLOW_{{{', '.join(sorted(missing)).upper()}}}"
        settings = _settings_from(env, monkeypatch)
        if "serve_host" in _needs(run, values) and "--host" not in run.args:
            assert settings.serve_host == "0.0.0.0", f"{run.where} would listen on {settings.serve_host}"
        for item in run.container.get("env") or []:
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if item["name"] == "STREAMFLOW_DB_URL" and ref:
                assert ref["key"] == "streamflow-url", f"{run.where}: STREAMFLOW_DB_URL from key {ref['key']}"
                secrets = [s for s in r.of_kind("Secret") if s["metadata"]["name"] == ref["name"]]
                if secrets:
                    assert ref["key"] in secrets[0]["data"], f"{run.where}: Secret {ref['name']} has no {ref['key']}"
                else:
                    assert ref["name"] == values["externalDatabase"]["existingSecret"] != "", ref


def test_the_configmap_builds_valid_settings(scenario: str, monkeypatch: pytest.MonkeyPatch) -> None:
    r, values = rendered(scenario), values_of(scenario)
    (config,) = [cm for cm in r.of_kind("ConfigMap") if "STREAMFLOW_HOME" in (cm.get("data") or {})]
    settings = _settings_from(config["data"] | {"STREAMFLOW_DB_URL": FAKE_DB_URL.format(db="streamflow")}, monkeypatch)
    assert settings.home == Path("/data/home")
    assert settings.is_postgres
    assert isinstance(settings.model_poll_seconds, float) and settings.model_poll_seconds > 0
    assert settings.model_poll_seconds == float(values["serving"]["pollSeconds"])
    assert settings.max_batch_size == values["serving"]["transformer"]["maxBatchSize"]
    assert settings.served_model_name == values["serving"]["modelName"]
    assert settings.serve_host == "0.0.0.0"
    assert isinstance(logging.getLevelName(settings.log_level.upper()), int), settings.log_level
    assert settings.tracking_uri.startswith("http://"), "the pods use the MLflow server, not a local store"


# ------------------------------------------------------------------------------------------------ addresses ↔ Services


def _service_routes_to(r: Rendered, host: str, port: int, kind: str = "Deployment") -> dict[str, Any]:
    """The container a Service's port reaches: the Service exists, has the port, selects a rendered pod template,
    and its targetPort is one of that container's ports."""
    svc = r.named("Service", host)
    matching = [p for p in svc["spec"]["ports"] if p["port"] == port]
    assert matching, f"Service {host} has no port {port}: {svc['spec']['ports']}"
    target = matching[0].get("targetPort", port)
    selector = svc["spec"]["selector"]
    workloads = [o for o in r.of_kind(kind) if selector.items() <= o["spec"]["template"]["metadata"]["labels"].items()]
    assert len(workloads) == 1, f"Service {host} selects {len(workloads)} {kind}s"
    for c in workloads[0]["spec"]["template"]["spec"]["containers"]:
        for p in c.get("ports") or []:
            if target in (p.get("name"), p["containerPort"]):
                return c | {"_port": p["containerPort"]}
    raise AssertionError(f"Service {host}:{port} targets {target!r}, which no container of {kind} exposes")


def _mlflow_service(r: Rendered) -> str:
    (config,) = [cm for cm in r.of_kind("ConfigMap") if "STREAMFLOW_HOME" in (cm.get("data") or {})]
    return urlsplit(config["data"]["STREAMFLOW_MLFLOW_TRACKING_URI"]).hostname


def test_urls_name_rendered_services(scenario: str) -> None:
    r, values = rendered(scenario), values_of(scenario)
    (config,) = [cm for cm in r.of_kind("ConfigMap") if "STREAMFLOW_HOME" in (cm.get("data") or {})]
    data = config["data"]
    mlflow = urlsplit(data["STREAMFLOW_MLFLOW_TRACKING_URI"])
    assert mlflow.scheme == "http" and mlflow.port, data["STREAMFLOW_MLFLOW_TRACKING_URI"]
    container = _service_routes_to(r, mlflow.hostname, mlflow.port)
    assert container["command"] == ["mlflow", "server"]
    assert container["_port"] == int(container["args"][container["args"].index("--port") + 1]), "MLflow's --port"
    if values["pushgateway"]["enabled"]:
        push = urlsplit(data["STREAMFLOW_PUSHGATEWAY_URL"])
        assert push.scheme == "http" and push.port == 9091, data["STREAMFLOW_PUSHGATEWAY_URL"]
        assert "pushgateway" in _service_routes_to(r, push.hostname, push.port)["image"]
    else:
        assert "STREAMFLOW_PUSHGATEWAY_URL" not in data, "no Pushgateway rendered: the URL would name nothing"


def test_the_transformer_calls_its_own_predictor(scenario: str) -> None:
    """KServe names the predictor's Service ``<isvc>-predictor``: the transformer of each InferenceService calls
    its own (never the other alias's)."""
    for run in runs_of(scenario):
        if family(run) == "model_server.transformer":
            ns = parse_server(family(run), run.args)
            assert ns.predictor_host == f"{run.obj['metadata']['name']}-predictor.{NAMESPACE}", run.where


def test_the_helm_test_calls_the_graph(scenario: str) -> None:
    r, values = rendered(scenario), values_of(scenario)
    (graph,) = r.of_kind("InferenceGraph")
    (run,) = [run for run in runs_of(scenario) if run.obj["kind"] == "Pod"]
    path, ctx = parse_streamflow(run.args)
    assert path == ["smoke"]
    args = list(run.args)
    url = urlsplit(args[args.index("--url") + 1])
    # KServe's Service for the graph is named after it, port 80 → the router's 8080
    assert (url.scheme, url.hostname, url.port) == ("http", f"{graph['metadata']['name']}.{NAMESPACE}", None), url
    # what the command will see: the users of the values, checked against the registry's production version
    assert ctx.params["user_ids"] == values["helmTest"]["userIds"]
    # every alias the graph routes to is a valid answer (the Splitter may send the request to either model)
    served = ["production", "challenger"] if values["challenger"]["enabled"] else ["production"]
    assert ctx.params["aliases"] == served
    step_services = {s["serviceName"] for s in graph["spec"]["nodes"]["root"]["steps"]}
    assert step_services == {i["metadata"]["name"] for i in r.of_kind("InferenceService")}


# ------------------------------------------------------------------------------------------------ the generated data


def _generate_run(scenario: str = "default") -> tuple[Run, Any]:
    run = next(run for run in runs_of(scenario) if run.args[:2] == ("data", "generate"))
    return run, parse_streamflow(run.args)[1]


def test_the_generate_step_writes_the_demos_drifted_month() -> None:
    from pipelines.demo import CONCEPT_SHIFT, DRIFT
    from pipelines.generate import parse_drift

    _, ctx = _generate_run()
    assert list(ctx.params["drift"]) == list(DRIFT), "the chart's drift recipe differs from `make demo`'s"
    assert ctx.params["concept_shift"] == CONCEPT_SHIFT
    for spec in ctx.params["drift"]:
        parse_drift(spec)
    assert ctx.params["out"] == Path("/data/months")


def test_the_helm_test_user_ids_are_subscribers_of_every_generated_month(tmp_path: Path) -> None:
    """The helm test may run after any month the generate step wrote: its users must be in all of them (one who
    churned is gone from the next month's folder, and from the online store once that month is materialized)."""
    from pipelines.generate import generate

    values = values_of("default")
    _, ctx = _generate_run()
    g = values["workflows"]["generate"]
    assert (ctx.params["users"], ctx.params["months"], ctx.params["seed"]) == (g["users"], g["months"], g["seed"])
    result = generate(tmp_path, users=ctx.params["users"], months=ctx.params["months"], seed=ctx.params["seed"])
    assert len(result.months) == g["months"]
    for month in result.months:
        with (month.folder / "users.csv").open(newline="") as f:
            known = {row["user_id"] for row in csv.DictReader(f)}
        unknown = [u for u in values["helmTest"]["userIds"] if u not in known]
        assert not unknown, f"helmTest.userIds not in {month.folder.name} of seed {g['seed']}: {unknown}"
