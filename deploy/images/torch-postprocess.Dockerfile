# The one dcam repository the stock image cannot serve: `dcam-build engines --layout ensemble`
# on a GPU, whose post-processing takes its inputs on the device and imports torch (DLPack),
# which NVIDIA's tritonserver images do not carry. The default fused layout needs none of this.
#
#   docker build -f deploy/images/torch-postprocess.Dockerfile --build-arg RELEASE=26.07 \
#       -t registry.example.com/dcam/tritonserver-torch:26.07-py3 .
#   dcam-build deploy REPO --out OUT --image registry.example.com/dcam/tritonserver-torch
#
# Tag it <release>-py3 like the image it derives from: `dcam-build deploy` keeps the tag rules
# (plans load only in the release that built them) and swaps only the name.
ARG RELEASE=26.07
FROM nvcr.io/nvidia/tritonserver:${RELEASE}-py3

# PyTorch's wheels bring their own CUDA runtime and need only the driver: take the index of the
# image's CUDA major (13 for the 26.xx releases, build/releases.py), cu130 being 13.0's.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
ARG TORCH_VERSION=
# The Python backend runs the image's python3: install into it (Ubuntu marks it externally
# managed; nothing else in the image uses pip's packages). torch does not depend on numpy, so the
# numpy the backend was built with stays.
ENV PIP_BREAK_SYSTEM_PACKAGES=1
RUN python3 -m pip install --no-cache-dir --index-url "${TORCH_INDEX}" \
        "torch${TORCH_VERSION:+==${TORCH_VERSION}}" \
    && python3 -c "import numpy, torch, torch.utils.dlpack; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'numpy', numpy.__version__)"
