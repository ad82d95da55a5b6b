# The image the KubeRay manifests run (manifests/): Ray 2.60 with this project installed, vLLM included for GPU
# workers.  docker build -t reasonrec:0.1.0 .
FROM rayproject/ray:2.60.0-py311-gpu
WORKDIR /home/ray/reasonrec
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users reasonrec ./reasonrec
COPY --chown=ray:users actors ./actors
COPY --chown=ray:users jobs ./jobs
RUN python -m pip install --no-cache-dir -e ".[vllm]"
