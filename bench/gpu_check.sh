#!/usr/bin/env bash
# The sharded-checkpoint checks that need CUDA (issue 25, item 2): FSDPStrategy(state_dict_type="sharded") and
# DeepSpeedStrategy on every GPU there is (at most 2), then the CPU model-parallel ones for comparison. Under 5 minutes
# on one GPU. Run from the repository root on a GPU machine: `bash bench/gpu_check.sh` (uses .venv/bin/python).
# DeepSpeed's case skips, saying why, where the `deepspeed` package is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA here'; print('GPUs:', torch.cuda.device_count(), torch.cuda.get_device_name(0))"
timeout 280 "$PY" -m pytest -p no:warnings -rs -v tests/test_sharded_gpu.py
