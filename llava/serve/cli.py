"""Chat with a LLaVA model about one image in the terminal, with streaming output.

    python -m llava.serve.cli --model-path PATH --image-file IMG [--device cpu] [--holov-tokens 64]

Reads one question per line from stdin; an empty line or end of input (Ctrl-D, or a
closed / piped stdin) ends the chat. The flags are LLaVA's, plus the pruning flags.
Ctrl-C ends it too, with one line on stderr and exit code 130; bad flags and stdin that
is not text are one-line errors (exit code 2).

The flags are parsed and checked before torch and the model code are imported (inside
:func:`chat`), so ``--help`` and a mistyped flag answer at once.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from threading import Thread
from typing import Optional

from holov_patches.cli_args import add_pruning_args, pruning_config_from_args
from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template, infer_conv_mode, user_message
from llava.utils import LlavaArgumentParser, add_device_arg, exit_code_of, pick_device, quiet_known_warnings


def __getattr__(name: str):
    # PEP 562: `cli.load_pretrained_model` (a test may replace it) is imported on first use,
    # not at startup, since it pulls in torch and transformers.
    if name == "load_pretrained_model":
        from llava.model.builder import load_pretrained_model

        return load_pretrained_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser(*, probe_device: bool = True) -> argparse.ArgumentParser:
    """The chat flags; ``probe_device=False`` (what :func:`main` uses) leaves ``--device``
    None until after parsing instead of importing torch to ask for a GPU."""
    p = LlavaArgumentParser(description="LLaVA chat CLI (HoloV-LLaVA)")
    p.add_argument("--model-path", type=str, default="facebook/opt-350m")
    p.add_argument("--model-base", type=str, default=None)
    p.add_argument("--image-file", type=str, required=True)
    add_device_arg(p, probe=probe_device)
    p.add_argument("--conv-mode", type=str, default=None)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--load-8bit", action="store_true")
    p.add_argument("--load-4bit", action="store_true")
    p.add_argument("--debug", action="store_true")
    p.add_argument("--kept-picture", type=str, default=None, metavar="PNG",
                   help="after the first answer, draw which visual tokens were kept into this file (same model, "
                        "loaded once)")
    return add_pruning_args(p)


def check_args(args: argparse.Namespace) -> None:
    """Reject bad flag values before the model loads (ValueError names the flag, the value
    and what is accepted). Flags this parser may not have (``--num_beams``, ``--top_p``) are
    checked when present."""
    temperature = args.temperature
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"--temperature {temperature} must be a finite number >= 0 (0 = greedy)")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens} must be >= 1")
    num_beams = getattr(args, "num_beams", None)
    if num_beams is not None and num_beams < 1:
        raise ValueError(f"--num_beams {num_beams} must be >= 1")
    top_p = getattr(args, "top_p", None)
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"--top_p {top_p} must be in (0, 1]")
    if args.load_8bit and args.load_4bit:
        raise ValueError("--load-8bit and --load-4bit exclude each other: pick one")
    image = args.image_file
    if not image.startswith(("http://", "https://")) and not os.path.isfile(image):
        raise ValueError(f"--image-file {image} {'is a directory' if os.path.isdir(image) else 'does not exist'}")
    # the pruning flags as a whole (a method name needs the registry, so this imports the methods)
    pruning_config_from_args(args)


def main(argv=None) -> int:
    try:
        args = build_parser(probe_device=False).parse_args(argv)
        check = exit_code_of(check_args, args, debug=args.debug)
        if check:
            return check
        return exit_code_of(chat, args, debug=args.debug)
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback, the shell's code for SIGINT
        print(file=sys.stdout, flush=True)
        print("interrupted", file=sys.stderr, flush=True)
        return 130


def read_question(prompt: str) -> Optional[str]:
    """One line from stdin; None at end of input. At a terminal the prompt is shown before
    the line is typed; with piped input the question is printed after it is read, so the
    transcript reads "USER: question / ASSISTANT: answer" with no prompt left dangling.
    Input that is not text in stdin's encoding raises ValueError instead of a decoding traceback."""
    interactive = sys.stdin.isatty()
    try:
        text = input(prompt if interactive else "")
    except EOFError:
        if interactive:
            print()
        return None
    except UnicodeDecodeError as err:
        encoding = getattr(sys.stdin, "encoding", None) or "utf-8"
        raise ValueError(f"stdin is not {encoding} text (byte {err.object[err.start]:#04x} at offset {err.start} "
                         f"of the line); type or pipe {encoding} text") from err
    if not interactive and text.strip():
        print(f"{prompt}{text}", flush=True)
    return text


def chat(args: argparse.Namespace) -> int:
    quiet_known_warnings()
    import torch
    from transformers import TextIteratorStreamer

    from llava.conversation import question_text
    from llava.mm_utils import get_model_name_from_path, load_image, process_images, tokenizer_image_token
    from llava.serve.visualize import draw_record

    load_pretrained_model = sys.modules[__name__].load_pretrained_model  # through this module: a test may replace it
    device = pick_device(args.device)
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

    first, picture = True, args.kept_picture
    while True:
        text = read_question(f"{roles[0]}: ")
        if text is None or not text.strip():
            break
        asked = question_text(text)  # this turn's question: what a text-conditioned pruner (CDPruner) reads
        if first:
            text = user_message(text, mm_use_im_start_end=getattr(model.config, "mm_use_im_start_end", False))
            first = False
        conv.append_message(roles[0], text)
        conv.append_message(roles[1], None)
        input_ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None].to(model.device)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=False, skip_special_tokens=True)
        gen_kwargs = dict(inputs=input_ids, images=image_tensor, image_sizes=[image.size], do_sample=args.temperature > 0,
                          max_new_tokens=args.max_new_tokens, streamer=streamer, use_cache=True,
                          pad_token_id=tokenizer.pad_token_id, pruning_text=asked)
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
        worker = Thread(target=run, daemon=True)  # Ctrl-C does not wait for the generation to end
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
        record = getattr(model, "last_pruning", None)
        if record is not None and args.debug:
            print(f"[holov] kept {[int((k >= 0).sum()) for k in record.kept_index]} of {record.num_tokens} visual tokens")
        if picture and record is not None:
            print(draw_record(record, model, image_processor, image, model.get_pruning(), picture))
            picture = None  # the first answer's prefill is the one drawn
    return 0


if __name__ == "__main__":
    sys.exit(main())
