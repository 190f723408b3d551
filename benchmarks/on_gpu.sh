#!/usr/bin/env bash
# The accelerator checks, in one short run on a machine with a GPU and the JAX
# CUDA build already installed: the engine's own tests on the GPU backend,
# then W1, W9 and W10 at the sizes of the benchmark specification.
#
#   bash benchmarks/on_gpu.sh [OUT]
#
# Wheels the machine lacks (zarr, numcodecs, dask, ...) may be put in .whl/;
# they are installed into /tmp/site first. Logs and JSON results go to OUT
# (default /tmp/dopax-gpu). Each step has its own time limit, so one slow step
# cannot take the others' time.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/dopax-gpu}}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1
bench=/tmp/dopax-bench
mkdir -p "$bench"

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc in $((SECONDS - start)) s"
  tail -n 25 "$out/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, numpyro, zarr, xarray, dopax; print('jax', jax.__version__, jax.devices(), \
'numpyro', numpyro.__version__, 'zarr', zarr.__version__, 'xarray', xarray.__version__)"

# The engine on the GPU backend: row/draw sharding, stores, batch sizes, the
# on-batch twins, numpyro.param sites and many threads. The kernels' own float32
# matrix products run at full precision here, as the tests compare with NumPy.
step tests 170 env JAX_DEFAULT_MATMUL_PRECISION=highest python3 -m pytest -q \
  -p no:cacheprovider -o addopts="" tests/model/test_any_kernel.py \
  tests/execution/test_engine.py -k "any_kernel or identical or per_row or log_likelihood or four"

step w1 150 python3 benchmarks/w1_linear.py --n 1000000 --reps 3 --cases predictive,dopax \
  --workdir "$bench" --no-save
if [ -f benchmarks/w10_answers.py ]; then
  step w10 200 python3 benchmarks/w10_answers.py --gpu
fi
if [ -f benchmarks/w9_panels.py ]; then
  step w9_latent 150 python3 benchmarks/w9_panels.py latent --sizes 100000,1000000 \
    --draws 1000 --reference-size 1000000 --equal-rows 0 --no-save
  step w9_panel 100 python3 benchmarks/w9_panels.py panel --units 20000,200000 --draws 100 \
    --effect-units 0 --equal-units 0 --no-save
fi
