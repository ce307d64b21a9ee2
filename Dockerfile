# QAnything's container with qasup as PID 1, replacing scripts/run_for_local_option.sh and
# run_for_cloud_option.sh. The base image is QAnything's own (Triton, FastChat, vLLM, PaddleOCR, Sanic);
# v1.2.2 is the tag QAnything's docker-compose-linux.yaml (master) used for the qanything_local service.
#
#   docker build -t qanything-qasup .                                # or --build-arg BASE_IMAGE=...
#   podman build --format docker -t qanything-qasup .                # podman's default OCI format drops HEALTHCHECK
#
# Run it with examples/compose/docker-compose.yaml (QAnything's compose file with qasup; stop_grace_period,
# GPUs, volumes, the healthcheck), or with plain docker:
#   docker run --gpus all --shm-size 8g --stop-timeout 75 -p 8777:8777 \
#       -v "$PWD":/workspace/qanything_local -v "$PWD"/assets/custom_models:/model_repos/CustomLLM \
#       qanything-qasup up -b vllm -m Qwen-7B-Chat -t qwen-7b-chat -s 7B
# (an exec-form command keeps an empty -m "" one argument: the script's unquoted $MODEL_NAME shifted flags).
#
# The demo stack (stand-ins, no GPU, no QAnything checkout) runs from the image alone:
#   docker run --rm -it --stop-timeout 75 qanything-qasup --config /workspace/examples/demo/qasup.toml up
#
# Grace period: Docker's SIGKILL must come after the stack's ordered shutdown, which stop_budget bounds
# (60s in qasup.toml): give it stop_budget + 15 s = 75 s (compose stop_grace_period: 75s, docker run
# --stop-timeout 75, docker stop -t 75). Docker's own default is ten seconds.

ARG BASE_IMAGE=freeren/qanything:v1.2.2
ARG QASUP_PYTHON=python3.11

# ---- the base with an interpreter qasup can use (Python >= 3.11 with venv and ensurepip)
# QAnything's image has an older python3, which its services keep using; qasup gets its own interpreter and
# virtual environment so that neither side changes the other's packages. The check tests what the build uses:
# a python3.11 without its -venv package (Debian and Ubuntu split ensurepip out) gets that package installed.
FROM ${BASE_IMAGE} AS python
ARG QASUP_PYTHON
RUN set -eux; \
    if ! "${QASUP_PYTHON}" -c 'import ensurepip, venv' >/dev/null 2>&1; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            "${QASUP_PYTHON}" "${QASUP_PYTHON}-venv"; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    "${QASUP_PYTHON}" -c 'import ensurepip, venv, sys; assert sys.version_info >= (3, 11), sys.version'

# ---- qasup's virtual environment, built from a copy of the source in a stage of its own: pip's build/ and
# qasup.egg-info stay in this stage, only /opt/qasup (the venv) goes into the image.
FROM python AS build
ARG QASUP_PYTHON
# pip's own settings, for a build behind a proxy or a private index (they stay in this stage): for example
#   --build-arg PIP_INDEX_URL=https://mirror/simple, or a CA bundle mounted for the build only:
#   podman build --format docker --volume /etc/ssl/certs/ca-certificates.crt:/run/ca.crt:ro \
#       --build-arg PIP_CERT=/run/ca.crt ...
ARG PIP_INDEX_URL=""
ARG PIP_CERT=""
COPY pyproject.toml README.md /src/
COPY supervisor /src/supervisor
RUN set -e; \
    [ -n "${PIP_INDEX_URL}" ] || unset PIP_INDEX_URL; \
    [ -n "${PIP_CERT}" ] || unset PIP_CERT; \
    "${QASUP_PYTHON}" -m venv /opt/qasup \
    && /opt/qasup/bin/pip install --no-cache-dir --disable-pip-version-check /src \
    && /opt/qasup/bin/qasup --help >/dev/null

# ---- the image: the base, the venv (same interpreter path as in the build stage), the stack, the demo
FROM python
COPY --from=build /opt/qasup /opt/qasup
RUN ln -sf /opt/qasup/bin/qasup /usr/local/bin/qasup && qasup --help >/dev/null

# The stack folder is /workspace: QAnything's checkout is mounted at /workspace/qanything_local (as in
# QAnything's compose file) and every unit refers to it as qanything_local/..., so the mount hides nothing here.
# examples/ holds the demo (the same units with standard-library stand-ins run by qasup's own python), whose
# qasup.toml points at ../../services.d, that is /workspace/services.d.
COPY qasup.toml /workspace/qasup.toml
COPY services.d /workspace/services.d
COPY examples /workspace/examples
WORKDIR /workspace
# The control socket of whichever stack runs (the real one or the demo), so `docker exec C qasup status` and
# the HEALTHCHECK find it without --config.
ENV QASUP_SOCKET=/workspace/.qasup/qasup.sock

EXPOSE 8777

# qasup runs as PID 1 itself, so no tini or dumb-init: it installs its own SIGTERM/SIGINT handlers (the kernel
# gives PID 1 no default actions), reaps every orphan with waitpid(-1) (the only reaper in the container),
# stops the services in reverse dependency order within stop_budget, SIGKILLs what outlives its stop
# timeout, and exits 0 after a clean stop or 1 after an abort, so Docker's restart policy sees failures.
STOPSIGNAL SIGTERM

# Healthy = every service the plan enabled is ready; asks the running daemon over its control socket.
HEALTHCHECK --interval=15s --timeout=10s --start-period=10m --retries=3 \
    CMD ["qasup", "wait-ready", "--timeout", "0"]

ENTRYPOINT ["qasup"]
CMD ["up"]
