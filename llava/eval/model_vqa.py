"""Answer a LLaVA question file one question at a time (LLaVA's ``model_vqa``; MM-Vet,
LLaVA-Bench). Same files as :mod:`llava.eval.model_vqa_loader`, without the DataLoader;
a question without ``image`` is asked as text only.

    python -m llava.eval.model_vqa --model-path PATH --question-file Q.jsonl --image-folder DIR \\
        --answers-file A.jsonl [--holov-tokens 64]
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

from tqdm import tqdm

from llava.eval.answers_io import AnswerWriter, add_lock_arg, question_prompt_key
from llava.eval.eval_common import (EvalModel, build_parser, check_args, check_image_files, check_unique, get_chunk, limit,
                                    read_jsonl, require_keys)
from llava.utils import die_with_parent, exit_code_of


def eval_model(args) -> str:
    check_args(args)
    questions = read_jsonl(args.question_file)
    for q in questions:
        require_keys(q, ("question_id", "text"), args.question_file, optional=("image",))
    check_unique(questions, args.question_file)
    questions = get_chunk(questions, args.num_chunks, args.chunk_idx)
    check_image_files(questions, args.image_folder, args.question_file)
    # the answers file is locked before the model loads: a second run refuses at once
    with AnswerWriter(args.answers_file, question_prompt_key, wait=args.wait_for_lock) as writer:
        em = EvalModel.load(args)
        from llava.mm_utils import load_image  # after the model code: not needed for --help
        writer.expect(em.settings)
        todo = writer.pending(questions, lambda q: (str(q["question_id"]), q["text"]))
        for line in tqdm(list(limit(todo, args.max_questions)), desc="questions"):
            if "image" in line:
                image = load_image(os.path.join(args.image_folder, line["image"]))
                input_ids = em.input_ids(em.prompt(line["text"], with_image=True))
                text = em.generate(input_ids, em.image_tensor([image]), [image.size], pruning_text=line["text"])
            else:
                text = em.generate(em.input_ids(em.prompt(line["text"], with_image=False)))
            writer.write(em.record(line["question_id"], line["text"], text))
    return args.answers_file


def main(argv: Optional[List[str]] = None) -> int:
    die_with_parent()
    args = add_lock_arg(build_parser(__doc__.split("\n\n")[0], max_new_tokens=1024, probe_device=False)).parse_args(argv)
    return exit_code_of(eval_model, args)


if __name__ == "__main__":
    sys.exit(main())
