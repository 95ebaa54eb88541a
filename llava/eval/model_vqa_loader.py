"""Answer a LLaVA question file with a DataLoader that prepares the next image while the
model generates (LLaVA's ``model_vqa_loader``; GQA, VQAv2, VizWiz, TextVQA, POPE, MME, SEED).

Questions: JSONL ``{"question_id", "image", "text", ...}``; the prompt is the conversation
template around ``<image>\\n`` + text. Answers: JSONL ``{"question_id", "prompt", "text",
"answer_id", "model_id", "metadata"}``, one line per question, flushed as written; a rerun
skips the questions already in ``--answers-file`` (see :mod:`llava.eval.answers_io`).

    python -m llava.eval.model_vqa_loader --model-path PATH --question-file Q.jsonl \\
        --image-folder DIR --answers-file A.jsonl [--holov-tokens 64] [--num-chunks N --chunk-idx I]
"""
from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from tqdm import tqdm

from llava.eval.answers_io import AnswerWriter, add_lock_arg, question_prompt_key
from llava.eval.eval_common import (EvalModel, build_parser, check_args, check_image_files, check_unique, get_chunk, limit,
                                    read_jsonl, require_keys)
from llava.eval.pruning_text import loader_text
from llava.utils import die_with_parent, exit_code_of


class QuestionDataset:
    """Tokenised prompt and preprocessed image of each question (runs in DataLoader workers).

    A plain map-style dataset (``__len__`` and ``__getitem__``, all ``DataLoader`` needs), not
    a ``torch.utils.data.Dataset`` subclass, so that this module imports no torch."""

    def __init__(self, questions: Sequence[Dict[str, Any]], image_folder: str, em: EvalModel):
        self.questions = questions
        self.image_folder = image_folder
        self.em = em

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int):
        from llava.mm_utils import load_image

        line = self.questions[index]
        image = load_image(os.path.join(self.image_folder, line["image"]))
        prompt = self.em.prompt(line["text"], with_image=True)
        return line, self.em.input_ids(prompt), self.em.image_tensor([image]), [image.size]


def eval_model(args) -> str:
    check_args(args)
    questions = read_jsonl(args.question_file)
    for q in questions:
        require_keys(q, ("question_id", "image", "text"), args.question_file)
    check_unique(questions, args.question_file)
    questions = get_chunk(questions, args.num_chunks, args.chunk_idx)
    check_image_files(questions, args.image_folder, args.question_file)
    if args.num_workers is not None and args.num_workers < 0:
        raise ValueError(f"--num-workers {args.num_workers} must be >= 0")
    # the answers file is locked before the model loads: a second run refuses at once
    with AnswerWriter(args.answers_file, question_prompt_key, wait=args.wait_for_lock) as writer:
        em = EvalModel.load(args)
        from torch.utils.data import DataLoader  # after the model code: not needed for --help

        writer.expect(em.settings)
        todo = list(limit(writer.pending(questions, lambda q: (str(q["question_id"]), q["text"])), args.max_questions))
        workers = args.num_workers if args.num_workers is not None else (4 if str(em.model.device).startswith("cuda") else 0)
        # batch_size=None: items come one by one, unbatched, as LLaVA's batch of 1.
        loader = DataLoader(QuestionDataset(todo, args.image_folder, em), batch_size=None, shuffle=False,
                            num_workers=workers)
        for line, input_ids, image_tensor, image_sizes in tqdm(loader, total=len(todo), desc="questions"):
            text = em.generate(input_ids, image_tensor, image_sizes, pruning_text=loader_text(line["text"]))
            writer.write(em.record(line["question_id"], line["text"], text))
    return args.answers_file


def main(argv: Optional[List[str]] = None) -> int:
    die_with_parent()
    parser = add_lock_arg(build_parser(__doc__.split("\n\n")[0], max_new_tokens=128, probe_device=False))
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader workers preparing images (default: 4 on GPU, 0 on CPU)")
    args = parser.parse_args(argv)
    return exit_code_of(eval_model, args)


if __name__ == "__main__":
    sys.exit(main())
