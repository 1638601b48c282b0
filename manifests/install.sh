#!/usr/bin/env bash
# StreamFlow's Kubernetes layer on a local kind cluster: one script behind the Makefile's Kubernetes targets.
#
#   manifests/install.sh [--dry-run] up                 kind cluster + add-ons (cert-manager, KServe, Argo Workflows,
#                                                       kube-prometheus-stack) + the streamflow namespace
#   manifests/install.sh [--dry-run] deploy             helm upgrade --install of charts/streamflow (no --wait)
#   manifests/install.sh [--dry-run] images             docker build of the project image, kind load into the cluster
#   manifests/install.sh [--dry-run] base-image         a local Debian base image where the official one cannot be pulled
#   manifests/install.sh [--dry-run] bootstrap          submit the streamflow-bootstrap workflow and wait for it
#   manifests/install.sh [--dry-run] upload-month DIR   copy a month_NNN folder into the data PVC
#   manifests/install.sh [--dry-run] port-forward       the InferenceGraph on localhost:8080
#   manifests/install.sh need TOOL...                   say which tools are missing and how to get them
#
# --dry-run (or DRY_RUN=1) prints on stdout every command it would run, one a line (a manifest fed on stdin as a
# heredoc), and runs none of them, not even the tool checks; the existence checks that make `up` re-runnable are
# skipped too, so it shows a first install. For real, commands are echoed on stderr as they run.
# Versions come only from the pin file, manifests/versions.env (STREAMFLOW_PINS names another one).
# Settings from the environment: KIND_CLUSTER, NAMESPACE, RELEASE (all "streamflow"), KUBE_CONTEXT
# (kind-$KIND_CLUSTER: every helm/kubectl call names it, so a run never touches whatever context is current),
# APP_VERSION (the project image tag; default: appVersion in charts/streamflow/Chart.yaml), WAIT_TIMEOUT (10m),
# BOOTSTRAP_TIMEOUT (60m).
set -euo pipefail

CALLER_DIR=$PWD  # upload-month's DIR is relative to where the script was called from
here=${BASH_SOURCE[0]%/*}
[[ $here == "${BASH_SOURCE[0]}" ]] && here=.
cd "$here/.."  # paths below are relative to the repository root, so the printed commands are the same anywhere
# shellcheck source=SCRIPTDIR/versions.env
source "${STREAMFLOW_PINS:-manifests/versions.env}"

KIND_CLUSTER="${KIND_CLUSTER:-streamflow}"
NAMESPACE="${NAMESPACE:-streamflow}"
RELEASE="${RELEASE:-streamflow}"
KUBE_CONTEXT="${KUBE_CONTEXT:-kind-$KIND_CLUSTER}"
WAIT_TIMEOUT="${WAIT_TIMEOUT:-10m}"
BOOTSTRAP_TIMEOUT="${BOOTSTRAP_TIMEOUT:-60m}"
IMAGE_REPOSITORY=streamflow
VALUES=manifests/values
DRY_RUN="${DRY_RUN:-0}"

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
dry() { [[ $DRY_RUN == 1 ]]; }
tell() { dry || say "$@"; }  # what to do next: only for real (a dry run's output is its commands)

# One command as a shell line: words made only of safe characters as they are, others single-quoted.
show() {
    local out=() word
    for word; do
        if [[ $word =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+=("$word"); else out+=("'${word//\'/\'\\\'\'}'"); fi
    done
    printf '%s' "${out[*]}"
}

run() {
    if dry; then printf '%s\n' "$(show "$@")"; return; fi
    say "+ $(show "$@")"
    "$@"
}

# run_with MANIFEST CMD...: CMD reads MANIFEST on stdin (shown as a heredoc).
run_with() {
    local manifest=$1
    shift
    if dry; then printf '%s <<EOF\n%s\nEOF\n' "$(show "$@")" "$manifest"; return; fi
    say "+ $(show "$@") <<EOF"
    "$@" <<<"$manifest"
}

helm_() { run helm --kube-context "$KUBE_CONTEXT" "$@"; }
kubectl_() { run kubectl --context "$KUBE_CONTEXT" "$@"; }

hint() {
    case $1 in
        docker) printf 'https://docs.docker.com/engine/install/ (Debian: apt-get install docker.io), then start it' ;;
        debootstrap) printf 'apt-get install debootstrap (as root)' ;;
        kind) printf 'go install sigs.k8s.io/kind@%s or %s' "$KIND_VERSION" \
            https://kind.sigs.k8s.io/docs/user/quick-start/#installation ;;
        helm) printf 'helm %s or newer: https://helm.sh/docs/intro/install/' "$HELM_MIN_VERSION" ;;
        kubectl) printf 'kubectl %s or newer: https://kubernetes.io/docs/tasks/tools/#kubectl' "$KUBECTL_MIN_VERSION" ;;
        *) printf 'install it' ;;
    esac
}

# at_least HAVE MIN: version HAVE (v1.2.3...) is MIN or newer.
at_least() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]; }

# need TOOL...: every missing tool is named with how to install it, then exit 1; too old a helm/kubectl, or a
# docker whose daemon does not answer, stops here too. Uses bash builtins only until every tool is found.
need() {
    dry && return 0
    local tool missing=()
    for tool; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
    if ((${#missing[@]})); then
        for tool in "${missing[@]}"; do say "$tool not found: $(hint "$tool")"; done
        die "missing: ${missing[*]} (nothing was created)"
    fi
    local have
    for tool; do
        case $tool in
            docker) docker info >/dev/null 2>&1 || die "docker is installed but its daemon does not answer: start it" ;;
            helm)
                have=$(helm version --template '{{.Version}}' 2>/dev/null || true)
                at_least "$have" "$HELM_MIN_VERSION" || die "helm ${have:-?} is too old: $(hint helm)" ;;
            kubectl)
                have=$(kubectl version --client 2>/dev/null | sed -n 's/^Client Version: //p')
                at_least "$have" "$KUBECTL_MIN_VERSION" || die "kubectl ${have:-?} is too old: $(hint kubectl)" ;;
            kind)
                have=$(kind version 2>/dev/null | cut -d' ' -f2)
                [[ $have == "$KIND_VERSION" ]] ||
                    say "warning: kind $have, pinned $KIND_VERSION (the node image $KIND_NODE_IMAGE is built for it)" ;;
        esac
    done
}

cluster_exists() { kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; }

# The chart's object-name prefix (charts/streamflow/templates/_helpers.tpl "streamflow.fullname").
fullname() {
    local name=$RELEASE
    [[ $RELEASE == *streamflow* ]] || name="$RELEASE-streamflow"
    name=${name:0:40}
    printf '%s' "${name%-}"
}

app_version() {
    if [[ -n ${APP_VERSION:-} ]]; then printf '%s' "$APP_VERSION"; return; fi
    local line
    [[ -f charts/streamflow/Chart.yaml ]] || die "charts/streamflow/Chart.yaml not found (set APP_VERSION)"
    while IFS= read -r line; do
        if [[ $line =~ ^appVersion:[[:space:]]*\"?([^\"[:space:]]+) ]]; then
            printf '%s' "${BASH_REMATCH[1]}"
            return
        fi
    done <charts/streamflow/Chart.yaml
    die "no appVersion in charts/streamflow/Chart.yaml (set APP_VERSION)"
}

# Deployments of an add-on Available: its webhooks answer before the next add-on or the chart needs them.
available() { kubectl_ -n "$1" wait --for=condition=Available deployment --all --timeout="$WAIT_TIMEOUT"; }

cmd_up() {
    need docker kind helm kubectl
    if ! dry && cluster_exists; then
        say "kind cluster $KIND_CLUSTER exists: kept"
    else
        run kind create cluster --name "$KIND_CLUSTER" --config kind-config.yaml --image "$KIND_NODE_IMAGE" --wait 5m
    fi

    # cert-manager first: kserve-resources creates an Issuer and a Certificate for KServe's webhook, and the
    # cert-manager webhook must answer before them.
    helm_ upgrade --install cert-manager "$CERT_MANAGER_CHART" --version "$CERT_MANAGER_VERSION" \
        --namespace cert-manager --create-namespace --values "$VALUES/cert-manager.yaml"
    available cert-manager

    # KServe's CRDs are their own chart, installed before the controller chart that uses them.
    helm_ upgrade --install kserve-crd "$KSERVE_CRD_CHART" --version "$KSERVE_VERSION" \
        --namespace kserve --create-namespace
    helm_ upgrade --install kserve-resources "$KSERVE_RESOURCES_CHART" --version "$KSERVE_VERSION" \
        --namespace kserve --values "$VALUES/kserve-resources.yaml"
    available kserve

    helm_ upgrade --install argo-workflows "$ARGO_WORKFLOWS_CHART" --version "$ARGO_WORKFLOWS_CHART_VERSION" \
        --namespace argo --create-namespace --values "$VALUES/argo-workflows.yaml" \
        --set images.tag="$ARGO_WORKFLOWS_VERSION"
    available argo

    helm_ upgrade --install kube-prometheus-stack "$KUBE_PROMETHEUS_STACK_CHART" \
        --version "$KUBE_PROMETHEUS_STACK_VERSION" --namespace monitoring --create-namespace \
        --values "$VALUES/kube-prometheus-stack.yaml"
    available monitoring

    # The StreamFlow namespace warns and audits on the restricted Pod Security profile but does not enforce it:
    # the InferenceGraph router pod KServe creates sets no seccomp profile (kserve v0.20.0
    # pkg/controller/v1alpha1/inferencegraph/raw_ig.go), so enforcing would refuse it. Every StreamFlow pod passes.
    if dry || ! kubectl --context "$KUBE_CONTEXT" get namespace "$NAMESPACE" >/dev/null 2>&1; then
        kubectl_ create namespace "$NAMESPACE"
    fi
    kubectl_ label namespace "$NAMESPACE" --overwrite \
        pod-security.kubernetes.io/warn=restricted pod-security.kubernetes.io/audit=restricted

    tell "add-ons ready. Next: make images deploy bootstrap (Grafana: kubectl --context $KUBE_CONTEXT -n monitoring" \
        "port-forward svc/kube-prometheus-stack-grafana 3000:80; user admin, password in the Secret" \
        "kube-prometheus-stack-grafana, key admin-password)"
}

cmd_deploy() {
    need helm kubectl
    local tag
    tag=$(app_version)
    # No --wait: the predictors are not ready until `make bootstrap` has promoted a first model.
    helm_ upgrade --install "$RELEASE" charts/streamflow --namespace "$NAMESPACE" --create-namespace \
        --set image.tag="$tag"
    tell "deployed. Next: make bootstrap (the predictors stay not ready until it has promoted a model)"
}

# has_image IMAGE: the engine holds IMAGE already.
has_image() { docker image inspect "$1" >/dev/null 2>&1; }

# The base the project image builds FROM: BASE_IMAGE (the official python image) when the engine has it or can pull
# it, else the local Debian base `base-image` makes (said so). Prints the image name on stdout.
pick_base() {
    if dry || has_image "$BASE_IMAGE"; then printf '%s' "$BASE_IMAGE"; return; fi
    if docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then printf '%s' "$BASE_IMAGE"; return; fi
    say "cannot pull $BASE_IMAGE (no registry reachable): building FROM $LOCAL_BASE_IMAGE," \
        "a Debian $DEBIAN_SUITE base made here from Debian's packages"
    has_image "$LOCAL_BASE_IMAGE" || cmd_base_image >&2
    printf '%s' "$LOCAL_BASE_IMAGE"
}

# The local stand-in for the official base where nothing can be pulled: Debian's own packages (debootstrap
# --variant=minbase, the content of debian:bookworm-slim) plus python3 3.11, python3-venv and ca-certificates,
# imported as LOCAL_BASE_IMAGE. Needs root (debootstrap) and an apt mirror; about a minute, ~170 MB.
cmd_base_image() {
    need docker debootstrap
    local root
    root=$(dry && printf '%s' /tmp/streamflow-base.XXXXXX || mktemp -d /tmp/streamflow-base.XXXXXX)
    # expanded now on purpose: $root is local to this function
    # shellcheck disable=SC2064
    dry || trap "rm -rf '$root'" EXIT
    run debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$DEBIAN_SUITE" \
        "$root" "$DEBIAN_MIRROR"
    # no package cache, lists or logs in the image (apt-get update inside a build fetches the lists again)
    run find "$root/var/cache/apt" "$root/var/lib/apt/lists" "$root/var/log" -type f -delete
    if dry; then
        printf 'tar -C %s -c . | docker import - %s\n' "$root" "$LOCAL_BASE_IMAGE"
    else
        say "+ tar -C $root -c . | docker import - $LOCAL_BASE_IMAGE"
        tar --numeric-owner -C "$root" -c . | docker import \
            --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["bash"]' - "$LOCAL_BASE_IMAGE" >/dev/null
        rm -rf "$root"
        trap - EXIT
    fi
    tell "made $LOCAL_BASE_IMAGE from Debian $DEBIAN_SUITE packages ($DEBIAN_MIRROR)"
}

# The build reaches the package index with the CA bundle SSL_CERT_FILE names, when set (a proxy that re-signs TLS):
# passed as an optional build input (.build-ca.pem in the context, read by the builder stage only), never part of
# the final image.
cmd_images() {
    need docker
    local image base ca=.build-ca.pem
    image="$IMAGE_REPOSITORY:$(app_version)"
    base=$(pick_base)
    if [[ -n ${SSL_CERT_FILE:-} && -f ${SSL_CERT_FILE:-} ]]; then
        run cp "$SSL_CERT_FILE" "$ca"
        dry || trap "rm -f '$ca'" EXIT
    fi
    run docker build --build-arg BASE_IMAGE="$base" --build-arg GIT_COMMIT="$(git_commit)" -t "$image" .
    if dry || { command -v kind >/dev/null 2>&1 && cluster_exists; }; then
        run kind load docker-image "$image" --name "$KIND_CLUSTER"
    else
        say "no kind cluster $KIND_CLUSTER: $image is built but not loaded (make kind-up, then make images)"
    fi
}

# The checkout's commit for the image's lineage (with -dirty when the tree has changes), or "unknown".
git_commit() {
    local commit
    commit=$(git rev-parse HEAD 2>/dev/null) || { printf unknown; return; }
    git diff --quiet HEAD 2>/dev/null || commit="$commit-dirty"
    printf '%s' "$commit"
}

cmd_bootstrap() {
    need kubectl
    local prefix name
    prefix=$(fullname)
    # Named here (not generateName) so the wait below needs nothing read back; ≤ 40 + 21 characters.
    name="$prefix-bootstrap-$(date +%s)"
    run_with "apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata:
  name: $name
spec:
  workflowTemplateRef:
    name: $prefix-bootstrap" kubectl --context "$KUBE_CONTEXT" -n "$NAMESPACE" create -f -
    tell "follow it: kubectl --context $KUBE_CONTEXT -n $NAMESPACE get workflow $name -w" \
        "(its steps: kubectl -n $NAMESPACE logs -l workflows.argoproj.io/workflow=$name -c main -f;" \
        "or argo -n $NAMESPACE watch $name)"
    # Completed is set on success and on failure alike: the phase says which.
    kubectl_ -n "$NAMESPACE" wait --for=condition=Completed "workflow/$name" --timeout="$BOOTSTRAP_TIMEOUT"
    dry && return
    local phase
    phase=$(kubectl --context "$KUBE_CONTEXT" -n "$NAMESPACE" get workflow "$name" -o jsonpath='{.status.phase}')
    [[ $phase == Succeeded ]] || die "workflow $name ended $phase: kubectl -n $NAMESPACE get workflow $name -o yaml"
    say "bootstrap done: a model is in production; the predictors become ready within their polling interval"
}

cmd_upload_month() {
    local dir=${1:-}
    [[ -n $dir ]] || die "usage: make upload-month DIR=path/to/month_NNN"
    dir=${dir%/}
    [[ $dir == /* ]] || dir="$CALLER_DIR/$dir"
    local month=${dir##*/}
    [[ -d $dir ]] || die "$dir is not a folder"
    [[ $month =~ ^month_[0-9]{3}$ ]] || die "$dir: the folder must be named month_NNN (e.g. month_003)"
    need kubectl
    local prefix pod image
    prefix=$(fullname)
    pod="$prefix-upload-${month//_/-}"
    image="$IMAGE_REPOSITORY:$(app_version)"
    if ! dry && ! kubectl --context "$KUBE_CONTEXT" -n "$NAMESPACE" get pvc "$prefix-data" >/dev/null 2>&1; then
        die "no PVC $prefix-data in namespace $NAMESPACE: run make deploy first"
    fi
    # A short-lived pod of the project image holding the data PVC, restricted like every StreamFlow pod; kubectl cp
    # needs tar in it (Debian's). activeDeadlineSeconds removes a pod this script could not delete.
    run_with "apiVersion: v1
kind: Pod
metadata:
  name: $pod
  labels:
    app.kubernetes.io/name: streamflow
    app.kubernetes.io/instance: $RELEASE
    app.kubernetes.io/component: upload
spec:
  restartPolicy: Never
  activeDeadlineSeconds: 1800
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 10001
    runAsGroup: 10001
    fsGroup: 10001
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: upload
      image: $image
      imagePullPolicy: IfNotPresent
      command: [sleep, \"1800\"]
      securityContext:
        runAsNonRoot: true
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities:
          drop: [ALL]
      resources:
        requests: {cpu: 10m, memory: 32Mi}
        limits: {cpu: 500m, memory: 256Mi}
      volumeMounts:
        - name: data
          mountPath: /data
  volumes:
    - name: data
      persistentVolumeClaim:
        claimName: $prefix-data" kubectl --context "$KUBE_CONTEXT" -n "$NAMESPACE" apply -f -
    # expanded now on purpose: $pod is local to this function (names are DNS labels: nothing to quote)
    # shellcheck disable=SC2064
    dry || trap "kubectl --context $KUBE_CONTEXT -n $NAMESPACE delete pod $pod --ignore-not-found --wait=false" EXIT
    kubectl_ -n "$NAMESPACE" wait --for=condition=Ready "pod/$pod" --timeout="$WAIT_TIMEOUT"
    kubectl_ -n "$NAMESPACE" exec "$pod" -- mkdir -p /data/months
    # Into an existing folder kubectl cp copies DIR by its own name: /data/months/month_NNN.
    kubectl_ -n "$NAMESPACE" cp "$dir" "$pod:/data/months"
    kubectl_ -n "$NAMESPACE" delete pod "$pod" --wait=false
    tell "uploaded $month; the CronWorkflow (or: streamflow monthly --next) ingests the oldest month not yet ingested"
}

cmd_port_forward() {
    need kubectl
    tell "then: curl -s localhost:8080 -H 'Content-Type: application/json'" \
        "-d '{\"inputs\":[{\"name\":\"user_id\",\"datatype\":\"BYTES\",\"shape\":[1],\"data\":[\"7590-VHVEG\"]}]}'"
    kubectl_ -n "$NAMESPACE" port-forward "svc/$(fullname)-churn" 8080:80
}

args=()
for arg; do
    if [[ $arg == --dry-run ]]; then DRY_RUN=1; else args+=("$arg"); fi
done
set -- "${args[@]+"${args[@]}"}"
command=${1:-}
(($#)) && shift
case $command in
    up | deploy | images | base-image | bootstrap | port-forward) "cmd_${command//-/_}" ;;
    upload-month) cmd_upload_month "$@" ;;
    need) DRY_RUN=0 need "$@" ;;
    *) die "usage: manifests/install.sh [--dry-run] up|deploy|images|base-image|bootstrap|port-forward|upload-month DIR|need TOOL" ;;
esac
