# The factory's image: the code location (Dagster's gRPC server), the runs the K8sRunLauncher
# starts, and the steps k8s_job_executor starts all use it. docs/DEPLOYMENT.md walks through it.
#   docker build -t qstar-dagster .                          # CPU torch (a few hundred MB)
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 \
#                --build-arg EXTRAS=shared,k8s,gpu -t qstar-dagster:gpu .   # CUDA torch and vLLM
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=shared,k8s
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/qstar
# torch first, from the index that matches the machines it will run on
RUN pip install --no-cache-dir --index-url ${TORCH_INDEX} torch
COPY pyproject.toml README.md workspace.yaml ./
COPY qstar_dagster ./qstar_dagster
RUN pip install --no-cache-dir ".[${EXTRAS}]"

# the data directory (checkpoints, exported datasets) is a volume shared by the pods;
# the lineage store is the shared PostgreSQL one (QSTAR_STORE) and the instance's is too
ENV QSTAR_HOME=/data DAGSTER_HOME=/opt/dagster QSTAR_EXECUTOR=k8s
EXPOSE 3030
CMD ["dagster", "api", "grpc", "-m", "qstar_dagster.definitions", "-h", "0.0.0.0", "-p", "3030"]
