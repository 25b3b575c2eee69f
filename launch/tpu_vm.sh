#!/usr/bin/env bash
# A multi-host Cloud TPU VM slice: the same command on every worker (gcloud --worker=all); each
# process joins jax.distributed (KDAD_DISTRIBUTED=1 lets JAX discover the slice from the TPU
# metadata) and training is data-parallel over all chips of the slice.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b bash launch/tpu_vm.sh \
#       configs/stfpm.py /mnt/shared/runs/stfpm --config.data.root=/mnt/shared/mvtec_ad
#
# Requirements: this repository at ~/kdad_jax on every worker (the first command below copies
# it) and a workdir and dataset on a file system all workers mount at the same path (Filestore /
# NFS); with preemptible/spot TPUs, rerun the script with the same workdir to resume.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: TPU_NAME=... ZONE=... $0 CONFIG WORKDIR [kdad_jax.main flags...]" >&2
  exit 2
fi
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
config=$1; workdir=$2; shift 2
here="$(cd "$(dirname "$0")/.." && pwd)"
gcloud compute tpus tpu-vm scp --recurse "$here" "$TPU_NAME":~/kdad_jax --zone="$ZONE" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  set -e
  cd ~/kdad_jax
  pip install -q -e '.[tpu]'
  KDAD_DISTRIBUTED=1 python -m kdad_jax.main --config=$config --workdir=$workdir --expect_platform=tpu $*
"
