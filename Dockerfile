# QAnything's container with qasup as PID 1, replacing scripts/run_for_local_option.sh and
# run_for_cloud_option.sh. The base image is QAnything's own (Triton, FastChat, vLLM, PaddleOCR, Sanic);
# v1.2.2 is the tag QAnything's docker-compose-linux.yaml used for the qanything_local service.
#
#   docker build -t qanything-qasup .                                   # or --build-arg BASE_IMAGE=...
#
# Run it the way QAnything's docker-compose-linux.yaml ran freeren/qanything, with qasup's flags (run.sh's):
#   qanything_local:
#     image: qanything-qasup
#     command: ["up", "-c", "${LLM_API}", "-i", "${DEVICE_ID}", "-b", "${RUNTIME_BACKEND}",
#               "-m", "${MODEL_NAME}", "-s", "${MODEL_SIZE}", "-t", "${CONV_TEMPLATE}", "-p", "${TP}",
#               "-r", "${GPU_MEM_UTILI}"]
#     stop_grace_period: 75s        # must exceed the stack's stop_budget (60s in qasup.toml)
#     shm_size: 8gb                 # NCCL (tensor parallel) needs it
#     volumes:
#       - ${DOCKER_VOLUME_DIRECTORY:-.}/assets/custom_models:/model_repos/CustomLLM
#       - ${DOCKER_VOLUME_DIRECTORY:-.}/:/workspace/qanything_local/
#     environment: [USER_IP=${USER_IP:-localhost}, NCCL_LAUNCH_MODE=PARALLEL]
#     deploy: {resources: {reservations: {devices: [{driver: nvidia, count: all, capabilities: [gpu]}]}}}
# With plain docker: docker run --gpus all --stop-timeout 75 ... qanything-qasup up -b vllm -m ... -s 7B
# (an exec-form command keeps an empty -m "" one argument: the script's unquoted $MODEL_NAME shifted flags).

ARG BASE_IMAGE=freeren/qanything:v1.2.2
FROM ${BASE_IMAGE}

# qasup needs Python >= 3.11; QAnything's image has an older python3, which its services keep using.
# qasup gets its own interpreter and virtual environment so that neither side changes the other's packages.
ARG QASUP_PYTHON=python3.11
RUN set -eux; \
    if ! command -v "${QASUP_PYTHON}" >/dev/null 2>&1; then \
        apt-get update; \
        apt-get install -y --no-install-recommends "${QASUP_PYTHON}" "${QASUP_PYTHON}-venv"; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    "${QASUP_PYTHON}" -m venv /opt/qasup

COPY pyproject.toml README.md /opt/qasup/src/
COPY supervisor /opt/qasup/src/supervisor
RUN /opt/qasup/bin/pip install --no-cache-dir /opt/qasup/src \
    && ln -sf /opt/qasup/bin/qasup /usr/local/bin/qasup

# The stack folder is /workspace: QAnything's checkout is mounted at /workspace/qanything_local (as in
# QAnything's compose file) and every unit refers to it as qanything_local/..., so the mount hides nothing here.
COPY qasup.toml /workspace/qasup.toml
COPY services.d /workspace/services.d
WORKDIR /workspace
ENV QASUP_SOCKET=/workspace/.qasup/qasup.sock

EXPOSE 8777

# qasup runs as PID 1 itself, so no tini or dumb-init: it installs its own SIGTERM/SIGINT handlers (the kernel
# gives PID 1 no default actions), reaps every orphan with waitpid(-1) (the only reaper in the container),
# stops each service's whole process group in reverse dependency order, SIGKILLs what outlives its stop
# timeout, and exits 0 after a clean stop or 1 after an abort, so Docker's restart policy sees failures.
STOPSIGNAL SIGTERM
# Docker's grace period (compose stop_grace_period, docker run/stop --stop-timeout; 10 s by default) must be
# longer than the stack's stop_budget (60s in qasup.toml), or Docker SIGKILLs qasup in mid-shutdown.

# Healthy = every service the plan enabled is ready; asks the running daemon over its control socket.
HEALTHCHECK --interval=15s --timeout=10s --start-period=10m --retries=3 \
    CMD ["qasup", "wait-ready", "--timeout", "0s"]

ENTRYPOINT ["qasup"]
CMD ["up"]
