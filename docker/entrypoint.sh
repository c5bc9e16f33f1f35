#!/bin/bash
# The image's entry point: torchrun on launch/pretrain.py. Arguments are the pipeline's
# (--config FILE --run-dir DIR key=value ...); torchrun's settings come from the environment:
#   NPROC_PER_NODE  processes on this node       (default: gpu = one per visible GPU, else 1 on CPU)
#   NNODES          nodes in the job             (default: 1, a standalone rendezvous)
#   RDZV_ENDPOINT   host:port of the first node  (required when NNODES > 1)
#   RDZV_ID         job id shared by all nodes   (default: mcl)
set -euo pipefail
cd /opt/mcl_dist
nproc=${NPROC_PER_NODE:-gpu}
if [ "$nproc" = gpu ] && ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  nproc=1
fi
nnodes=${NNODES:-1}
if [ "$nnodes" = 1 ]; then
  rdzv=(--standalone)
else
  : "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port of the first node when NNODES > 1}"
  rdzv=(--rdzv_backend=c10d "--rdzv_endpoint=$RDZV_ENDPOINT" "--rdzv_id=${RDZV_ID:-mcl}")
fi
exec torchrun --nnodes="$nnodes" --nproc_per_node="$nproc" "${rdzv[@]}" launch/pretrain.py "$@"
