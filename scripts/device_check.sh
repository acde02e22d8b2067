#!/usr/bin/env bash
# The device check: validates and measures the harness's GPU path in one unattended run of under nine
# minutes (steps and limits: scripts/device_check.py; what each step does: scripts/device_steps.py).
#
#   bash scripts/device_check.sh OUT          # on a GPU machine
#   bash scripts/device_check.sh --cpu OUT    # the same code paths at tiny sizes on the CPU (CI runs this)
#
# Writes OUT/summary.json and OUT/summary.md; exits non-zero if any check failed or any step crashed or ran
# out of time.
#
# A GPU machine without network: the packages it lacks travel as wheels in device_wheels/ (ignored by git)
# and are installed into OUT/site, which goes first on PYTHONPATH. Made on a machine with network, for the
# GPU machine's Python (3.12, x86_64):
#
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#     --platform manylinux2014_x86_64 -d device_wheels trl==1.16.0 hydra-core==1.3.8 omegaconf==2.3.1 \
#     datasets==5.2.0 pyarrow==26.0.1 dill==0.4.1 xxhash==4.1.0 multiprocess==0.70.19 math-verify==0.9.0 \
#     latex2sympy2_extended==1.11.0 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 liger-kernel==0.8.5
#   pip wheel --no-deps -w device_wheels antlr4-python3-runtime==4.9.3   # published as a source archive only
#
# 15 wheels, 57 MiB (pyarrow alone is 52 MiB): with the 4 MiB working tree, under the 64 MiB that travels.
# Carried with the run tool as: carry=["device_wheels"], command "bash scripts/device_check.sh $OUT/check".
# The machine must already have torch, transformers, accelerate, numpy, pandas and pyyaml.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

mode=()
out=""
for arg in "$@"; do
  case "$arg" in
    --cpu) mode=(--cpu) ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    -*) echo "device_check.sh: unknown option $arg (allowed: --cpu, --help)" >&2; exit 2 ;;
    *) out="$arg" ;;
  esac
done
if [ -z "$out" ]; then
  echo "usage: bash scripts/device_check.sh [--cpu] OUT   (OUT: the folder to write the summaries into)" >&2
  exit 2
fi
mkdir -p "$out" || exit 2
out="$(cd "$out" && pwd)"
python="${PYTHON:-python3}"

shopt -s nullglob
wheels=(device_wheels/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
  echo "installing ${#wheels[@]} carried wheel(s) into $out/site"
  "$python" -m pip install --quiet --no-index --no-deps --target "$out/site" "${wheels[@]}" || exit 1
  export PYTHONPATH="$out/site${PYTHONPATH:+:$PYTHONPATH}"
fi
"$python" -c 'import sys, torch; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.cuda.is_available()}")' || exit 1
exec "$python" scripts/device_check.py "${mode[@]}" --out "$out"
