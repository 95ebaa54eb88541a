"""Answer ScienceQA in LLaVA's conversation format (LLaVA's ``model_vqa_science``).

Questions: ``llava_test_CQM-A.json``, a JSON list of ``{"id", "image"?, "conversations":
[{"from": "human", "value": "<image>\\nContext: ...\\nQuestion\\nA. ...\\nB. ..."}, ...]}``.
The first human turn is the question (its ``<image>`` marker is dropped and put back in
front when the problem has an image; text-only problems are asked without one).
``--single-pred-prompt`` appends "Answer with the option's letter from the given choices
directly." Answers: LLaVA JSONL with ``question_id`` = the problem id; the ``prompt`` is
the question as shown, ``<image>\\n`` first for problems with an image (the ScienceQA
scorer's convention).

    python -m llava.eval.model_vqa_science --model-path PATH --question-file llava_test_CQM-A.json \\
        --image-folder scienceqa/images/test --answers-file A.jsonl --single-pred-prompt
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Optional

from tqdm import tqdm

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.eval.answers_io import AnswerWriter, add_lock_arg, question_key
from llava.eval.eval_common import (MC_PROMPT, EvalModel, build_parser, check_args, check_image_files, get_chunk, limit,
                                    read_text, require_keys)
from llava.utils import die_with_parent, exit_code_of


def question_text(line: Dict[str, Any], where: str) -> str:
    """The first human turn without its ``<image>`` marker."""
    require_keys(line, ("id", "conversations"), where, optional=("image",))
    turns = line["conversations"]
    if not isinstance(turns, list) or not turns or not isinstance(turns[0], dict) or "value" not in turns[0]:
        raise ValueError(f"{where}: problem {line['id']!r} has no first turn with a 'value'")
    if not isinstance(turns[0]["value"], str):
        raise ValueError(f"{where}: problem {line['id']!r} has a {type(turns[0]['value']).__name__} first turn "
                         f"'value'; it must be a string")
    return turns[0]["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()


def load_questions(path: str) -> List[Dict[str, Any]]:
    try:
        questions = json.loads(read_text(path, "question file"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from err
    if not isinstance(questions, list):
        raise ValueError(f"{path}: expected a JSON list of problems, got {type(questions).__name__}")
    seen = set()
    for line in questions:
        question_text(line, path)  # a malformed problem fails before the model loads
        if str(line["id"]) in seen:
            raise ValueError(f"{path}: problem id {line['id']!r} appears twice; answers could not be told apart")
        seen.add(str(line["id"]))
    return questions


def eval_model(args) -> str:
    check_args(args)
    questions = get_chunk(load_questions(args.question_file), args.num_chunks, args.chunk_idx)
    check_image_files(questions, args.image_folder, args.question_file)
    # the answers file is locked before the model loads: a second run refuses at once
    with AnswerWriter(args.answers_file, question_key, wait=args.wait_for_lock) as writer:
        em = EvalModel.load(args)
        from llava.mm_utils import load_image  # after the model code: not needed for --help
        writer.expect(em.settings)
        todo = writer.pending(questions, lambda q: str(q["id"]))
        for line in tqdm(list(limit(todo, args.max_questions)), desc="questions"):
            qs = question_text(line, args.question_file)
            shown = asked = qs  # asked: the pruning text, without the answer-format sentence (the CDPruner authors')
            if args.single_pred_prompt:
                qs = qs + "\n" + MC_PROMPT
                shown = shown + "\n" + MC_PROMPT
            if "image" in line:
                image = load_image(os.path.join(args.image_folder, line["image"]))
                input_ids = em.input_ids(em.prompt(qs, with_image=True))
                text = em.generate(input_ids, em.image_tensor([image]), [image.size], pruning_text=asked)
                shown = DEFAULT_IMAGE_TOKEN + "\n" + shown
            else:
                text = em.generate(em.input_ids(em.prompt(qs, with_image=False)))
            writer.write(em.record(line["id"], shown, text))
    return args.answers_file


def main(argv: Optional[List[str]] = None) -> int:
    die_with_parent()
    args = add_lock_arg(build_parser(__doc__.split("\n\n")[0], max_new_tokens=1024,
                                     single_pred_prompt=True, probe_device=False)).parse_args(argv)
    return exit_code_of(eval_model, args)


if __name__ == "__main__":
    sys.exit(main())
