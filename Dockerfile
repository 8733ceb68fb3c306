# syntax=docker/dockerfile:1
#
# appidentity-operator: docker build -t appidentity-operator:0.1.0 .
#
# Two stages on the same pinned base (an exact Python patch release on Debian 12 "bookworm").
# The builder turns the project into a wheel and installs it with its dependencies into a
# virtualenv at /opt/venv; the final image gets only that virtualenv: no compilers, no build
# tools, no pip in the venv, no source tree. It runs as 65532:65532 and writes nowhere but /tmp,
# so it works with readOnlyRootFilesystem (deploy/deployment.yaml mounts an emptyDir there).
# When publishing, also pin the base by digest: python:3.11.17-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11.17-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install pip==25.3
WORKDIR /src
# .dockerignore limits the context to pyproject.toml, README/LICENSE (if present) and operator/.
COPY . .
# Only binary wheels for the dependencies: the builder has no compiler, and a dependency that
# would need one should fail the build here rather than pull in a toolchain.
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --only-binary=:all: /wheels/*.whl \
 && /opt/venv/bin/pip uninstall --yes pip setuptools \
 && /opt/venv/bin/appidentity-operator --help >/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="appidentity-operator" \
      org.opencontainers.image.description="Least-privilege application identities for Kubernetes, proven with their own token" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
# A named user for the numeric ID the Pod runs as; no pip, setuptools or wheel left to use at
# run time (the venv has none either). The official base has pip in site-packages; a Debian-built
# base (`make image` where no registry is reachable) has it only as ensurepip's wheels.
RUN groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin nonroot \
 && if python -m pip --version >/dev/null 2>&1; then \
      python -m pip uninstall --yes --root-user-action=ignore pip setuptools wheel; fi \
 && rm -rf /root/.cache /usr/share/python-wheels
COPY --from=builder /opt/venv /opt/venv
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 8081
ENTRYPOINT ["/opt/venv/bin/appidentity-operator"]
CMD ["run", "--all-namespaces"]
