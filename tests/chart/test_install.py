"""The add-on install path (manifests/install.sh), offline: its dry run is the command list a real install runs.

The dry run runs here with a PATH holding only bash and a few coreutils, so it is also the proof that it runs
nothing: no kind, helm, kubectl or docker exists to be called. Its output must equal the golden list
(``STREAMFLOW_UPDATE_GOLDEN=1`` rewrites it), keep the install order the add-ons need, and take every version from
the one pin file. A real run with the same PATH must stop before doing anything and say which tool is missing.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.chart.conftest import PINS, pins

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "manifests" / "install.sh"
VALUES = ROOT / "manifests" / "values"
GOLDEN = Path(__file__).parent / "golden" / "install-dry-run.txt"
COREUTILS = ["cat", "cut", "date", "dirname", "env", "head", "ls", "mkdir", "rm", "sort", "tr"]
TOOLS = ["docker", "kind", "helm", "kubectl"]
# kube-prometheus-stack parts a laptop goes without: alertmanager, the cluster exporters, the control-plane scrapes
KPS_OFF = (
    "alertmanager nodeExporter kubeStateMetrics "
    "kubeApiServer kubeControllerManager kubeScheduler kubeProxy kubeEtcd coreDns"
).split()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """bin/ holds bash and some coreutils only, none of the tools the script drives; home/ is HOME and the cwd."""
    root = tmp_path_factory.mktemp("sandbox")
    (root / "bin").mkdir()
    (root / "home").mkdir()
    for name in ["bash", *COREUTILS]:
        if found := shutil.which(name):
            (root / "bin" / name).symlink_to(found)
    return root


def install(sandbox: Path, *args: str, pin_file: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run the script with nothing from the caller's environment but what is given (so the defaults apply)."""
    base = {"PATH": str(sandbox / "bin"), "HOME": str(sandbox / "home"), "LC_ALL": "C"}
    if pin_file:
        base["STREAMFLOW_PINS"] = str(pin_file)
    return subprocess.run(
        [str(sandbox / "bin" / "bash"), str(SCRIPT), *args],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=sandbox / "home",
    )


def dry_run(sandbox: Path, *args: str, **kw) -> str:
    done = install(sandbox, "--dry-run", *args, **kw)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def up(sandbox: Path) -> str:
    return dry_run(sandbox, "up")


@pytest.fixture(scope="module")
def commands(up: str) -> list[list[str]]:
    return [shlex.split(line) for line in up.splitlines()]


def test_pin_file_is_plain_key_value():
    """Sourceable by bash and readable by make: KEY=VALUE with no quotes or spaces, each pin (or group of pins from
    one source) under a comment naming where it was checked."""
    previous = ""
    for line in PINS.read_text().splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*=[^\s'\"]+", line), line
            assert previous.startswith("#") or "=" in previous, f"{line}: no comment naming its source above it"
        previous = line


def test_dry_run_equals_golden(up: str):
    if os.environ.get("STREAMFLOW_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(up)
    assert up == GOLDEN.read_text(), "install order or commands changed: review, then STREAMFLOW_UPDATE_GOLDEN=1"


def test_install_order(commands: list[list[str]]):
    def first(pred) -> int:
        return next(i for i, c in enumerate(commands) if pred(c))

    def release(name: str) -> int:
        return first(lambda c: c[:1] == ["helm"] and "--install" in c and c[c.index("--install") + 1] == name)

    def waited(namespace: str) -> int:
        return first(lambda c: c[:1] == ["kubectl"] and "wait" in c and c[c.index("-n") + 1] == namespace)

    assert commands[0][:3] == ["kind", "create", "cluster"]
    assert release("cert-manager") < waited("cert-manager")
    assert waited("cert-manager") < first(lambda c: any("kserve" in word for word in c))
    assert release("kserve-crd") < release("kserve-resources") < waited("kserve")
    addons = [i for i, c in enumerate(commands) if c[:1] == ["helm"]]
    assert len(addons) == 5
    namespace = first(lambda c: "namespace" in c and "streamflow" in c)
    assert max(addons) < max(waited(ns) for ns in ["cert-manager", "kserve", "argo", "monitoring"]) < namespace
    assert not any("charts/streamflow" in c for c in commands), "the chart is deploy's, not up's"


def test_namespace_warns_and_audits_restricted_without_enforcing(commands: list[list[str]]):
    label = next(c for c in commands if "label" in c)
    assert "pod-security.kubernetes.io/warn=restricted" in label
    assert "pod-security.kubernetes.io/audit=restricted" in label
    assert not any("enforce" in word for word in label)


def test_every_version_comes_from_the_pin_file(up: str, commands: list[list[str]]):
    values = set(pins().values())
    for words in commands:
        for flag in ("--version", "--image"):
            if flag in words:
                assert words[words.index(flag) + 1] in values, words
        for word in words:
            if word.startswith("oci://") or word.startswith("images.tag="):
                assert word.removeprefix("images.tag=") in values, word
    for version in re.findall(r"v?\d+\.\d+\.\d+", up):
        assert any(version in value for value in values), f"{version} is not from {PINS.name}"


def test_changing_a_pin_changes_the_commands(sandbox: Path, up: str, tmp_path: Path):
    used = {key: value for key, value in pins().items() if value in up}
    # the kind CLI version and the tool floors appear only in the tool checks, which a dry run skips
    # (the image pins are images' and base-image's: test_images_build_from_the_pinned_base)
    image_pins = {"BASE_IMAGE", "LOCAL_BASE_IMAGE", "DEBIAN_SUITE", "DEBIAN_MIRROR"}
    assert set(pins()) - set(used) == {"KIND_VERSION", "HELM_MIN_VERSION", "KUBECTL_MIN_VERSION"} | image_pins
    for key, value in used.items():
        changed = tmp_path / f"{key}.env"
        changed.write_text(PINS.read_text().replace(f"{key}={value}\n", f"{key}={value}-pin-test\n"))
        assert dry_run(sandbox, "up", pin_file=changed) == up.replace(value, f"{value}-pin-test"), key


def test_values_files_exist(commands: list[list[str]]):
    named = {Path(c[c.index("--values") + 1]) for c in commands if "--values" in c}
    assert named == {p.relative_to(ROOT) for p in VALUES.glob("*.yaml")}


def dig(values: dict, path: str):
    for key in path.split("."):
        values = values[key]
    return values


@pytest.mark.parametrize(
    ("file", "path", "expected"),
    [
        ("kserve-resources", "kserve.controller.deploymentMode", "Standard"),
        ("kserve-resources", "kserve.controller.gateway.disableIngressCreation", True),
        ("cert-manager", "crds.enabled", True),
        ("argo-workflows", "workflow.rbac.create", False),
        ("argo-workflows", "executor.securityContext.allowPrivilegeEscalation", False),
        *[
            ("kube-prometheus-stack", f"prometheus.prometheusSpec.{kind}SelectorNilUsesHelmValues", False)
            for kind in ["serviceMonitor", "podMonitor", "rule", "probe", "scrapeConfig"]
        ],
        ("kube-prometheus-stack", "grafana.enabled", True),
        ("kube-prometheus-stack", "grafana.sidecar.dashboards.enabled", True),
        ("kube-prometheus-stack", "grafana.sidecar.dashboards.label", "grafana_dashboard"),
        ("kube-prometheus-stack", "grafana.sidecar.dashboards.labelValue", "1"),
        ("kube-prometheus-stack", "grafana.sidecar.dashboards.searchNamespace", "ALL"),
        *[("kube-prometheus-stack", f"{part}.enabled", False) for part in KPS_OFF],
    ],
)
def test_values(file: str, path: str, expected):
    values = yaml.safe_load((VALUES / f"{file}.yaml").read_text())
    assert dig(values, path) == expected


def test_kind_config_matches_the_pin():
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert [node["role"] for node in config["nodes"]] == ["control-plane"]
    assert config["nodes"][0]["image"] == pins()["KIND_NODE_IMAGE"]
    assert "extraMounts" not in config["nodes"][0], "hostPath breaks the restricted profile: data goes through a PVC"


def test_deploy_installs_the_chart_without_waiting(sandbox: Path):
    app_version = yaml.safe_load((ROOT / "charts" / "streamflow" / "Chart.yaml").read_text())["appVersion"]
    expected = (
        "helm --kube-context kind-streamflow upgrade --install streamflow charts/streamflow "
        f"--namespace streamflow --create-namespace --set image.tag={app_version}\n"
    )
    assert dry_run(sandbox, "deploy") == expected
    assert "image.tag=9.9.9" in dry_run(sandbox, "deploy", APP_VERSION="9.9.9")


def heredoc(output: str) -> dict:
    return yaml.safe_load(output.split("<<EOF\n", 1)[1].split("\nEOF\n", 1)[0])


def test_bootstrap_submits_the_template_and_waits(sandbox: Path):
    out = dry_run(sandbox, "bootstrap", RELEASE="demo")
    workflow = heredoc(out)
    assert workflow["spec"] == {"workflowTemplateRef": {"name": "demo-streamflow-bootstrap"}}
    assert f"wait --for=condition=Completed workflow/{workflow['metadata']['name']} " in out


def test_upload_month_pod_is_restricted(sandbox: Path, tmp_path: Path):
    import kubernetes_validate

    month = tmp_path / "month_007"
    month.mkdir()
    out = dry_run(sandbox, "upload-month", str(month))
    pod = heredoc(out)
    kubernetes_validate.validate(pod, "1.36", strict=True)
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    assert spec["securityContext"]["runAsUser"] == 10001 and spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "streamflow-data"
    assert container["volumeMounts"][0]["mountPath"] == "/data"
    steps = out.split("\nEOF\n", 1)[1]
    assert f"cp {month} streamflow-upload-month-007:/data/months\n" in steps
    assert steps.rstrip().endswith("delete pod streamflow-upload-month-007 --wait=false")


def test_upload_month_refuses_a_folder_not_named_month_nnn(sandbox: Path, tmp_path: Path):
    done = install(sandbox, "--dry-run", "upload-month", str(tmp_path))
    assert done.returncode == 1 and "month_NNN" in done.stderr


def test_missing_tools_are_named_with_how_to_install_them(sandbox: Path, tmp_path: Path):
    """A real run (no --dry-run) without the tools stops first, naming each one and how to get it."""
    pinned = tmp_path / "versions.env"
    pinned.write_text(PINS.read_text().replace("KIND_VERSION=v0.32.0", "KIND_VERSION=v0.99.0"))
    before = sorted(sandbox.rglob("*"))
    done = install(sandbox, "up", pin_file=pinned)
    assert done.returncode != 0
    assert done.stdout == ""
    for tool in TOOLS:
        assert f"{tool} not found: " in done.stderr
    assert "go install sigs.k8s.io/kind@v0.99.0" in done.stderr, "the hint's version comes from the pin file"
    assert "https://kind.sigs.k8s.io/docs/user/quick-start/#installation" in done.stderr
    assert "nothing was created" in done.stderr
    assert sorted(sandbox.rglob("*")) == before


def test_images_build_from_the_pinned_base(sandbox: Path):
    """`make images` builds FROM the official base by default (a real run falls back to the local Debian base only
    when that cannot be pulled, saying so: the container tier runs that path), tagged with the chart's appVersion,
    and loads it into kind; `make base-image` makes the local base from the pinned Debian suite and mirror."""
    app_version = yaml.safe_load((ROOT / "charts" / "streamflow" / "Chart.yaml").read_text())["appVersion"]
    p = pins()
    lines = dry_run(sandbox, "images").splitlines()
    build = shlex.split(lines[0])
    assert build[:2] == ["docker", "build"] and build[-1] == "."
    assert build[build.index("-t") + 1] == f"streamflow:{app_version}"
    assert f"BASE_IMAGE={p['BASE_IMAGE']}" in build and p["BASE_IMAGE"] == "python:3.11-slim-bookworm"
    assert lines[1] == f"kind load docker-image streamflow:{app_version} --name streamflow"
    base = dry_run(sandbox, "base-image").splitlines()
    debootstrap = shlex.split(base[0])
    assert debootstrap[:2] == ["debootstrap", "--variant=minbase"]
    assert "--include=python3,python3-venv,ca-certificates" in debootstrap
    assert debootstrap[-3] == p["DEBIAN_SUITE"] and debootstrap[-1] == p["DEBIAN_MIRROR"]
    assert base[-1].endswith(f"| docker import - {p['LOCAL_BASE_IMAGE']}")


def test_the_runtime_lock_pins_what_the_full_lock_pins():
    """The image installs requirements-runtime.lock: the same versions as requirements.lock (the venv the tests
    run in), without the dev extra."""

    def pinned(name: str) -> dict[str, str]:
        lines = (ROOT / name).read_text().splitlines()
        return dict(line.split("==", 1) for line in lines if line and not line.startswith((" ", "#")))

    full, runtime = pinned("requirements.lock"), pinned("requirements-runtime.lock")
    assert {"kserve", "mlflow", "feast", "evidently", "scikit-learn"} <= set(runtime)
    assert {name: full.get(name) for name in runtime} == runtime
    assert not {"pytest", "ruff", "helm-python-sdk", "tritonclient"} & set(runtime)
