"""One question about one or more images, answered once (LLaVA's ``run_llava``).

    python -m llava.eval.run_llava --model-path PATH --image-file a.jpg[,b.jpg] --query "..." [--holov-tokens 64]
"""
from __future__ import annotations

import argparse
import sys

from holov_patches.cli_args import add_pruning_args, pruning_config_from_args
from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import build_prompt, infer_conv_mode
from llava.utils import LlavaArgumentParser, add_device_arg, exit_code_of, pick_device, quiet_known_warnings


def eval_model(args: argparse.Namespace) -> str:
    # torch and the model code are imported here, after the flags are parsed: --help and a
    # mistyped flag answer without them
    quiet_known_warnings()
    pruning = pruning_config_from_args(args)  # bad pruning flags fail before the model loads
    import torch

    from llava.conversation import question_text
    from llava.mm_utils import get_model_name_from_path, load_image, process_images, tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    model_name = get_model_name_from_path(args.model_path)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path, args.model_base, model_name, device=pick_device(args.device), pruning=pruning)
    conv_mode = args.conv_mode or infer_conv_mode(model_name)
    prompt = build_prompt(args.query, conv_mode, mm_use_im_start_end=getattr(model.config, "mm_use_im_start_end", False),
                          keep_placed_tags=True)
    images = [load_image(f) for f in args.image_file.split(args.sep)]
    image_tensor = process_images(images, image_processor, model.config)
    image_tensor = image_tensor.to(model.device, dtype=model.dtype) if isinstance(image_tensor, torch.Tensor) else \
        [t.to(model.device, dtype=model.dtype) for t in image_tensor]
    input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None].to(model.device)
    gen = dict(images=image_tensor, image_sizes=[img.size for img in images], do_sample=args.temperature > 0,
               num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, use_cache=True,
               pad_token_id=tokenizer.pad_token_id, pruning_text=question_text(args.query))
    if args.temperature > 0:
        gen.update(temperature=args.temperature, top_p=args.top_p)
    output_ids = model.generate(input_ids, **gen)
    answer = tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()
    print(answer)
    return answer


def build_parser(*, probe_device: bool = True) -> argparse.ArgumentParser:
    """``probe_device=False`` (what :func:`main` uses) leaves ``--device`` None until after
    parsing instead of importing torch to ask for a GPU."""
    p = LlavaArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", type=str, default="facebook/opt-350m")
    p.add_argument("--model-base", type=str, default=None)
    p.add_argument("--image-file", type=str, required=True)
    p.add_argument("--query", type=str, required=True)
    p.add_argument("--conv-mode", type=str, default=None)
    p.add_argument("--sep", type=str, default=",")
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--num_beams", type=int, default=1)
    p.add_argument("--max_new_tokens", type=int, default=512)
    add_device_arg(p, probe=probe_device)
    return add_pruning_args(p)


def main(argv=None) -> int:
    args = build_parser(probe_device=False).parse_args(argv)
    return exit_code_of(eval_model, args)


if __name__ == "__main__":
    sys.exit(main())
