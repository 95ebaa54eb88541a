#!/usr/bin/env bash
# Installs lmms-eval 0.7.x into the ACTIVE virtualenv without the CUDA torchvision / torch
# upgrade its metadata asks for: lmms-eval itself with --no-deps, then only the packages that
# `python -m lmms_eval eval` imports with our llava_holov plugin (and the stock llava wrapper,
# and the LLaVA-1.5 benchmark tasks' utils: pope, mme, gqa, textvqa, scienceqa, mmbench,
# seedbench, vqav2, vizwiz_vqa, mmmu), under a constraint that pins the installed torch.
#   - filelock<4: filelock 4.x has no filelock._api, which lmms-eval's evaluator patches
#     ("No module named 'filelock._api'").
#   - sentencepiece<0.2.3: 0.2.3 fails beside protobuf<7 ("incompatible Protobuf Gencode/Runtime").
#   - torchvision is never installed: the PyPI wheel is a CUDA build that breaks
#     `import torchvision` and `from transformers import CLIPImageProcessor` beside a CPU torch.
# Idempotent: when everything is already satisfied it only checks (about a second).
#   LMMS_EVAL_SPEC  lmms-eval requirement (default lmms-eval==0.7.3)
#   PYTHON          interpreter of the target virtualenv (default: python)
set -euo pipefail
if [[ -z "${PYTHON:-}" ]]; then
  # shellcheck disable=SC1091
  source "$(dirname "${BASH_SOURCE[0]}")/use_venv.sh"  # the project's .venv, activated if needed
fi
PYTHON="${PYTHON:-python}"
LMMS_EVAL_SPEC="${LMMS_EVAL_SPEC:-lmms-eval==0.7.3}"
RUNTIME_REQS=(
  "loguru" "sacrebleu" "evaluate" "pytz" "tenacity" "pytablewriter"
  "datasets" "pandas" "pyarrow" "accelerate" "sympy" "jinja2" "pyyaml" "pillow" "requests"
  "filelock<4" "sentencepiece<0.2.3" "protobuf"
)

"$PYTHON" - <<'EOF'
import sys
if sys.prefix == sys.base_prefix:
    sys.exit("[lmms-eval] refusing to install outside a virtualenv: activate one first (source scripts/env.sh)")
try:
    import torch  # noqa: F401
except ImportError:
    sys.exit("[lmms-eval] torch is not installed in this virtualenv: install it first (scripts/env.sh does)")
EOF

# Prints the requirements that are not satisfied yet (nothing when all are).
missing() {
  "$PYTHON" - "$LMMS_EVAL_SPEC" "${RUNTIME_REQS[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
from packaging.requirements import Requirement

for spec in sys.argv[1:]:
    req = Requirement(spec)
    try:
        installed = version(req.name)
    except PackageNotFoundError:
        print(spec)
        continue
    if not req.specifier.contains(installed, prereleases=True):
        print(spec)
EOF
}

todo="$(missing)"
if [ -z "$todo" ]; then
  echo "[lmms-eval] $LMMS_EVAL_SPEC and its runtime packages are already installed"
  exit 0
fi
echo "[lmms-eval] installing: $(echo "$todo" | tr '\n' ' ')"
torch_before="$("$PYTHON" -c 'from importlib.metadata import version; print(version("torch"))')"
had_torchvision="$("$PYTHON" -c 'from importlib.metadata import distributions as d; print(any(x.metadata["Name"] == "torchvision" for x in d()))')"
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==$torch_before" > "$constraints"
# Runtime packages first (resolved normally, torch held by the constraint), then
# lmms-eval alone without its declared dependencies.
"$PYTHON" -m pip install -q -c "$constraints" "${RUNTIME_REQS[@]}"
"$PYTHON" -m pip install -q --no-deps "$LMMS_EVAL_SPEC"
torch_after="$("$PYTHON" -c 'from importlib.metadata import version; print(version("torch"))')"
if [ "$torch_after" != "$torch_before" ]; then
  echo "[lmms-eval] ERROR: torch changed from $torch_before to $torch_after" >&2
  exit 1
fi
has_torchvision="$("$PYTHON" -c 'from importlib.metadata import distributions as d; print(any(x.metadata["Name"] == "torchvision" for x in d()))')"
if [ "$had_torchvision" = "False" ] && [ "$has_torchvision" = "True" ]; then
  echo "[lmms-eval] ERROR: torchvision was pulled in; uninstall it (pip uninstall -y torchvision)" >&2
  exit 1
fi
left="$(missing)"
if [ -n "$left" ]; then
  echo "[lmms-eval] ERROR: still unsatisfied after install: $left" >&2
  exit 1
fi

# After an install: import what `python -m lmms_eval eval` loads, plus the image processor
# our loader uses (about 6 s, so skipped when nothing changed).
"$PYTHON" -c "import lmms_eval.__main__, lmms_eval.evaluator, lmms_eval.models, lmms_eval.tasks; \
from transformers import CLIPImageProcessor; import torch; \
print('[lmms-eval] ok: lmms-eval', __import__('importlib.metadata').metadata.version('lmms-eval'), '| torch', torch.__version__)"
