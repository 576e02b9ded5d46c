# One image for every worker; the service's command picks the role (see docker-compose.yml).
# GPU hosts: build with --build-arg EXTRA=gpu and a CUDA base image to use faiss-gpu and CUDA torch.
FROM python:3.11-slim
ARG EXTRA=cpu
WORKDIR /app
COPY requirements.lock requirements-nodeps.txt pyproject.toml README.md ./
COPY schemas schemas
COPY streams streams
COPY index index
COPY model_worker model_worker
COPY vip5 vip5
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.lock \
    && pip install --no-cache-dir --no-deps -r requirements-nodeps.txt \
    && pip install --no-cache-dir --no-deps -e ".[${EXTRA}]"
USER 1000:1000
ENTRYPOINT ["vip5"]
