"""Chat with a LLaVA model about one image in the terminal, with streaming output.

    python -m llava.serve.cli --model-path PATH --image-file IMG [--device cpu] [--holov-tokens 64]

Reads one question per line from stdin; an empty line or end of input (Ctrl-D, or a
closed / piped stdin) ends the chat. The flags are LLaVA's, plus the pruning flags.
"""
from __future__ import annotations

import argparse
import sys
from threading import Thread

import torch
from transformers import TextIteratorStreamer

from holov_patches.cli_args import add_pruning_args, pruning_config_from_args
from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template, infer_conv_mode
from llava.mm_utils import get_model_name_from_path, load_image, process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.utils import disable_torch_init, exit_code_of, pick_device


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="LLaVA chat CLI (HoloV-LLaVA)")
    p.add_argument("--model-path", type=str, default="facebook/opt-350m")
    p.add_argument("--model-base", type=str, default=None)
    p.add_argument("--image-file", type=str, required=True)
    p.add_argument("--device", type=str, default="cuda")
    p.add_argument("--conv-mode", type=str, default=None)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--load-8bit", action="store_true")
    p.add_argument("--load-4bit", action="store_true")
    p.add_argument("--debug", action="store_true")
    return add_pruning_args(p)


def first_user_message(text: str, mm_use_im_start_end: bool) -> str:
    image = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN if mm_use_im_start_end else DEFAULT_IMAGE_TOKEN
    return f"{image}\n{text}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return exit_code_of(chat, args, debug=args.debug)


def chat(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    disable_torch_init()
    model_name = get_model_name_from_path(args.model_path)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path, args.model_base, model_name, args.load_8bit, args.load_4bit, device=device,
        pruning=pruning_config_from_args(args))
    conv_mode = args.conv_mode or infer_conv_mode(model_name)
    conv = get_conv_template(conv_mode)
    roles = conv.roles

    image = load_image(args.image_file)
    image_tensor = process_images([image], image_processor, model.config)
    image_tensor = image_tensor.to(model.device, dtype=model.dtype) if isinstance(image_tensor, torch.Tensor) else \
        [t.to(model.device, dtype=model.dtype) for t in image_tensor]

    first = True
    while True:
        try:
            text = input(f"{roles[0]}: ")
        except EOFError:
            print()
            break
        if not text.strip():
            break
        if first:
            text = first_user_message(text, getattr(model.config, "mm_use_im_start_end", False))
            first = False
        conv.append_message(roles[0], text)
        conv.append_message(roles[1], None)
        input_ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None].to(model.device)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=False, skip_special_tokens=True)
        gen_kwargs = dict(inputs=input_ids, images=image_tensor, image_sizes=[image.size], do_sample=args.temperature > 0,
                          max_new_tokens=args.max_new_tokens, streamer=streamer, use_cache=True,
                          pad_token_id=tokenizer.pad_token_id)
        if args.temperature > 0:
            gen_kwargs["temperature"] = args.temperature
        errors = []

        def run():
            try:
                model.generate(**gen_kwargs)
            except BaseException as err:  # re-raised below in the main thread
                errors.append(err)
                streamer.end()

        print(f"{roles[1]}: ", end="", flush=True)
        worker = Thread(target=run)
        worker.start()
        pieces = []
        for piece in streamer:
            pieces.append(piece)
            print(piece, end="", flush=True)
        worker.join()
        print()
        if errors:
            raise errors[0]
        answer = "".join(pieces).strip()
        conv.messages[-1][-1] = answer
        if args.debug:
            print("\n", {"prompt": conv.get_prompt(), "outputs": answer}, "\n")
        if getattr(model, "last_pruning", None) is not None and args.debug:
            kept = model.last_pruning
            print(f"[holov] kept {[int((k >= 0).sum()) for k in kept.kept_index]} of {kept.num_tokens} visual tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
