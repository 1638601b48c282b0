# StreamFlow: one image for every `streamflow` step, both KServe servers and the MLflow server.
#
#   make images                    build streamflow:<appVersion> (and load it into kind when a cluster exists)
#   docker build --build-arg BASE_IMAGE=streamflow-base:bookworm .    where the official base cannot be pulled
#
# BASE_IMAGE: the official python:3.11-slim-bookworm (Python in /usr/local) or `make base-image`'s Debian bookworm
# base (Debian's python3 3.11 in /usr/bin): both give `python3` on PATH, which is all this file relies on. The
# builder and the final stage must use the same base: the venv links to the base's interpreter.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS deps
ARG UV_VERSION=0.13.9
WORKDIR /src
# .build-ca.pem: an optional CA bundle for a proxy that re-signs TLS (manifests/install.sh copies the host's when
# SSL_CERT_FILE is set). The glob keeps the COPY valid when it is absent; it stays in this stage only.
COPY requirements-runtime.lock requirements.lock .build-ca.pe[m] ./
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 UV_NO_CACHE=1 UV_LINK_MODE=copy
RUN set -eu; \
    if [ -f .build-ca.pem ]; then export SSL_CERT_FILE=/src/.build-ca.pem PIP_CERT=/src/.build-ca.pem UV_NATIVE_TLS=1; fi; \
    python3 -m venv /opt/uv && /opt/uv/bin/pip install -q "uv==${UV_VERSION}"; \
    python3 -m venv --without-pip /opt/streamflow; \
    /opt/uv/bin/uv pip install -q --python /opt/streamflow/bin/python --no-deps --compile-bytecode \
        -r requirements-runtime.lock; \
    # the test suites these libraries ship (~130 MB, pandas' alone 39 MB): never imported at run time
    site=/opt/streamflow/lib/python3.11/site-packages; \
    for package in pandas numpy scipy sklearn statsmodels matplotlib pyarrow; do \
        find "$site/$package" -depth -type d -name tests -exec rm -rf {} +; \
    done

FROM deps AS builder
COPY pyproject.toml README.md ./
COPY pipelines pipelines
COPY model_server model_server
COPY feature_repo feature_repo
# declared here, not above: a new commit must not invalidate the dependency layers (every RUN after an ARG sees it)
ARG GIT_COMMIT=unknown
# The project as a package (not editable: feature_repo/ ships in site-packages), bytecode compiled now because the
# root filesystem is read-only at run time; the training lineage (commit, lock hash) written beside the code.
RUN set -eu; \
    if [ -f .build-ca.pem ]; then export SSL_CERT_FILE=/src/.build-ca.pem PIP_CERT=/src/.build-ca.pem UV_NATIVE_TLS=1; fi; \
    /opt/uv/bin/uv pip install -q --python /opt/streamflow/bin/python --no-deps --compile-bytecode .; \
    site=$(cd / && /opt/streamflow/bin/python -c 'import pipelines, os; print(os.path.dirname(pipelines.__file__))'); \
    printf '{"git_commit": "%s", "lock_hash": "%s"}\n' "$GIT_COMMIT" \
        "$(sha256sum requirements.lock | cut -d' ' -f1)" > "$site/_build_info.json"; \
    /opt/streamflow/bin/streamflow --help >/dev/null; \
    # what the project added to the venv (its RECORD's top-level entries, with their bytecode), kept apart so the
    # final stage copies the dependencies' 1.4 GB layer from `deps` (cached while the lock is unchanged) and only
    # this on a code change
    packages=$(dirname "$site"); \
    entries=$(cd "$packages" && sed 's/,.*//' streamflow-*.dist-info/RECORD | cut -d/ -f1 | sort -u | grep -vx '\.\.'); \
    mkdir /overlay; \
    (cd / && tar -cf - opt/streamflow/bin/streamflow $(for e in $entries; do echo "${packages#/}/$e"; done)) \
        | tar -C /overlay -xf -

FROM ${BASE_IMAGE}
# The fixed non-root user the chart runs as (values podSecurity.runAsUser / runAsGroup). It owns the folders the
# chart mounts volumes on (/data, /mlflow): a fresh volume takes their owner, as fsGroup gives a pod on a cluster.
RUN groupadd --system --gid 10001 streamflow \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/streamflow --no-create-home --shell /usr/sbin/nologin streamflow \
 && mkdir -p /home/streamflow /data /mlflow \
 && chown 10001:10001 /home/streamflow /data /mlflow
COPY --from=deps /opt/streamflow /opt/streamflow
COPY --from=builder /overlay/ /
# Writable paths are volumes at run time (STREAMFLOW_HOME under /data, /tmp, HOME): the root filesystem can be
# read-only. OMP_NUM_THREADS=1: one scoring thread per server process (bench: more threads lost throughput on
# small requests); the predictor's --threads sets it again for its own process.
ENV PATH=/opt/streamflow/bin:$PATH \
    VIRTUAL_ENV=/opt/streamflow \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OMP_NUM_THREADS=1 \
    HOME=/home/streamflow \
    STREAMFLOW_HOME=/data/home
USER 10001:10001
WORKDIR /home/streamflow
CMD ["streamflow", "--help"]
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="streamflow" \
      org.opencontainers.image.description="StreamFlow churn loop: pipeline steps, KServe predictor and transformer, MLflow server" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${GIT_COMMIT}"
