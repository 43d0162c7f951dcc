#!/usr/bin/env bash
# Create or refresh the project's virtual environment; idempotent and quick when it is ready.
# Usage: scripts/bootstrap.sh [VENV_DIR]   (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
stamp="$venv/.bootstrap-ok"
sys_pkgs=(openmpi-bin libopenmpi-dev cmake g++ make slurmctld slurmd slurm-client munge iproute2 procps)

missing=()
for p in "${sys_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "bootstrap: missing system packages; as root run: apt-get install -y ${missing[*]}" >&2
    exit 2
  fi
fi

# Up to date when the stamp is newer than every file that decides the environment.
if [[ -f $stamp && $stamp -nt constraints.txt && $stamp -nt setup.cfg && $stamp -nt scripts/bootstrap.sh ]]; then
  exit 0
fi

py=${PYTHON:-python3.11}
command -v "$py" >/dev/null || { echo "bootstrap: $py not found; install Python 3.11" >&2; exit 2; }
[[ -x $venv/bin/python ]] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install -U "pip<25" "setuptools<71" wheel
# Everything but Horovod, pinned by the one constraints file.
"${pip[@]}" install -c constraints.txt tensorflow-cpu tensorflow-datasets numpy protobuf \
  tensorflow-metadata googleapis-common-protos pandas matplotlib scikit-learn pillow \
  importlib_resources tqdm pytest pytest-timeout
if ! "$venv/bin/horovodrun" --check-build 2>/dev/null | grep -q "\[X\] TensorFlow"; then
  echo "bootstrap: building Horovod 0.28.1 against TensorFlow 2.15.1 (about 3 minutes)"
  # Debian's cmake 3.25 is used; the policy floor also rescues pip's cmake 4.x (Horovod's bundled gloo).
  CMAKE_POLICY_VERSION_MINIMUM=3.5 HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
  HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
    "${pip[@]}" install -c constraints.txt --no-build-isolation --no-cache-dir horovod
fi
"${pip[@]}" install -c constraints.txt --no-deps --no-build-isolation -e .
check=$("$venv/bin/horovodrun" --check-build)
for fw in TensorFlow MPI Gloo; do
  grep -q "\[X\] $fw" <<<"$check" || { echo "bootstrap: Horovod built without $fw:"; echo "$check"; exit 1; } >&2
done
touch "$stamp"
echo "bootstrap: environment ready in $venv"
