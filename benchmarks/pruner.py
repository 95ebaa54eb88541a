"""Cost of the HoloV pruner (arXiv 2510.02912): ours (faithful and improved, batched over
images and crops) against the per-image, per-chunk loop that stands for the released code
(tests/reference_holov_loop.py).

For B in (1, 8) at N=576, D=4096, K=64 (LLaVA-1.5-7B, 88.9% pruned) it prints the number
of dispatched torch ops (counted with a TorchDispatchMode) and the median CPU time of a
few runs, with loop / ours ratios, and checks that faithful mode keeps the loop's tokens.
``--device cuda`` adds CUDA timings in ms (synchronised) when a GPU is present.

    python -m benchmarks.pruner [--repeats 5] [--device cuda]
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path
from typing import Callable, Dict

import torch

from benchmarks.op_count import count_ops
from holov_patches.methods.holov import prune

ROOT = Path(__file__).resolve().parents[1]


def _load_reference():
    spec = importlib.util.spec_from_file_location("reference_holov_loop", ROOT / "tests" / "reference_holov_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_holov_loop


def median_seconds(runners: Dict[str, Callable[[], object]], repeats: int,
                   sync: Callable[[], None] = lambda: None) -> Dict[str, float]:
    """Median wall time of each runner; the runners take turns so that a load change on a
    shared machine hits all of them alike."""
    for fn in runners.values():  # warm-up
        fn()
    sync()
    times: Dict[str, list] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _runners(tokens: torch.Tensor, cls_attn: torch.Tensor, keep: int) -> Dict[str, Callable[[], object]]:
    reference = _load_reference()
    return {
        "ours faithful": lambda: prune(tokens, cls_attn, keep),
        "ours improved": lambda: prune(tokens, cls_attn, keep, mode="improved"),
        "loop reference": lambda: reference(tokens, cls_attn, keep),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda adds GPU timings")
    parser.add_argument("--tokens", type=int, default=576, help="N visual tokens per image")
    parser.add_argument("--dim", type=int, default=4096, help="D token width")
    parser.add_argument("--keep", type=int, default=64, help="K tokens kept")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1")
    use_cuda = args.device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        print("--device cuda: no CUDA device visible to torch; CUDA timings skipped")
        use_cuda = False
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; N={args.tokens}, D={args.dim}, K={args.keep}, "
          f"float32, median of {args.repeats} interleaved runs")
    header = f"{'B':>2}  {'method':<15} {'ops':>6} {'loop/ours':>9}  {'CPU ms':>8} {'loop/ours':>9}"
    if use_cuda:
        header += f"  {'CUDA ms':>8} {'loop/ours':>9}"
    print(header)
    for batch in (1, 8):
        g = torch.Generator().manual_seed(batch)
        tokens = torch.randn(batch, args.tokens, args.dim, generator=g)
        cls_attn = torch.randn(batch, args.tokens, generator=g).softmax(-1)
        runners = _runners(tokens, cls_attn, args.keep)
        ops = {name: count_ops(fn) for name, fn in runners.items()}
        cpu = median_seconds(runners, args.repeats)
        gpu = {}
        if use_cuda:
            gpu_runners = _runners(tokens.cuda(), cls_attn.cuda(), args.keep)
            gpu = median_seconds(gpu_runners, args.repeats, torch.cuda.synchronize)
        loop = "loop reference"
        for name in runners:
            line = (f"{batch:>2}  {name:<15} {ops[name]:>6} {ops[loop] / ops[name]:>8.1f}x  "
                    f"{1e3 * cpu[name]:>8.2f} {cpu[loop] / cpu[name]:>8.2f}x")
            if gpu:
                line += f"  {1e3 * gpu[name]:>8.2f} {gpu[loop] / gpu[name]:>8.2f}x"
            print(line)
        ours_kept, ours_index = runners["ours faithful"]()
        loop_kept, loop_index = runners[loop]()
        same = torch.equal(ours_index, loop_index) and torch.equal(ours_kept, loop_kept)
        print(f"{batch:>2}  faithful keeps the loop's tokens and output tensor: {same}")


if __name__ == "__main__":
    main()
