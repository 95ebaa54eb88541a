"""Answer MMBench / MMBench-CN (LLaVA's ``model_vqa_mmbench``).

Questions: the released TSV (``index, question, hint, A..D, answer, category, image``, the
image base64-encoded). Options are A, B, C, D up to the first empty one; a non-empty hint
goes before the question, then one ``X. option`` line per option. ``--single-pred-prompt``
appends "Answer with the option's letter from the given choices directly." (``--lang cn``:
"请直接回答选项字母。"). ``--all-rounds`` asks each question once per rotation of its
options (round r shows the options rotated left by r: MMBench's CircularEval when the TSV
has no circular copies). Answers: LLaVA JSONL plus ``round_id``, ``options`` (as shown in
that round) and ``option_char``; a rerun skips the (question_id, round_id) pairs already
answered.

    python -m llava.eval.model_vqa_mmbench --model-path PATH --question-file mmbench_dev_20230712.tsv \\
        --answers-file A.jsonl --single-pred-prompt [--lang cn] [--all-rounds]
"""
from __future__ import annotations

import math
import sys
from typing import Any, Dict, List, Optional

from tqdm import tqdm

from llava.eval.answers_io import AnswerWriter, add_lock_arg, question_round_key
from llava.eval.eval_common import (MC_PROMPT, MC_PROMPT_CN, EvalModel, build_parser, check_args, get_chunk, limit,
                                    read_text, require_keys)
from llava.utils import die_with_parent, exit_code_of

ALL_OPTIONS = ("A", "B", "C", "D")


def is_none(value: Any) -> bool:
    """LLaVA's test for an empty TSV cell: None, NaN, or the strings 'nan' / 'none'."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in ("nan", "none")


def get_options(row: Dict[str, Any]) -> List[str]:
    """Option texts A, B, ... up to the first empty one."""
    options = []
    for col in ALL_OPTIONS:
        if col not in row or is_none(row[col]):
            break
        options.append(str(row[col]))
    if not options:
        raise ValueError(f"MMBench row {row.get('index')!r} has no options (columns A-D are empty)")
    return options


def load_rows(path: str) -> List[Dict[str, Any]]:
    """TSV rows as dicts, cells as strings (an option "2" stays "2", not 2.0), ``index`` as int.

    An ``image`` cell holding another row's index (VLMEvalKit's way of sharing an image)
    is replaced by that row's image."""
    import io

    import pandas as pd

    text = read_text(path, "question file")  # not UTF-8: one clear error naming the file
    try:
        df = pd.read_csv(io.StringIO(text), sep="\t", dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{path}: not a readable TSV ({err})") from err
    rows = df.to_dict("records")
    for row in rows:
        require_keys(row, ("index", "question", "image"), path)
        row["index"] = int(row["index"])
    images = {row["index"]: row["image"] for row in rows}
    if len(images) != len(rows):
        raise ValueError(f"{path}: some 'index' values appear twice; answers could not be told apart")
    for row in rows:
        ref = row["image"]
        if isinstance(ref, str) and len(ref) < 64 and ref.strip().lstrip("-").isdigit():
            if int(ref) not in images:
                raise ValueError(f"{path}: row {row['index']} points to the image of row {ref}, which is not in the file")
            row["image"] = images[int(ref)]
        get_options(row)
    return rows


def round_question(row: Dict[str, Any], options: List[str]) -> str:
    """Hint, question and the options as lettered lines (the prompt LLaVA records)."""
    question = row["question"]
    hint = row.get("hint")
    if not is_none(hint):
        question = hint + "\n" + question
    for char, option in zip(ALL_OPTIONS, options):
        question = question + "\n" + char + ". " + option
    return question


def instruction(lang: str, single_pred_prompt: bool) -> str:
    """What follows the options in the model's prompt (not in the recorded ``prompt``, as LLaVA)."""
    if lang not in ("en", "cn"):
        raise ValueError(f"lang={lang!r} must be 'en' or 'cn'")
    if not single_pred_prompt:
        return ""
    return "\n" + (MC_PROMPT_CN if lang == "cn" else MC_PROMPT)


def eval_model(args) -> str:
    check_args(args)
    rows = get_chunk(load_rows(args.question_file), args.num_chunks, args.chunk_idx)
    suffix = instruction(args.lang, args.single_pred_prompt)
    # the answers file is locked before the model loads: a second run refuses at once
    with AnswerWriter(args.answers_file, question_round_key, wait=args.wait_for_lock) as writer:
        em = EvalModel.load(args)
        from llava.mm_utils import load_image_from_base64  # after the model code: not needed for --help
        writer.expect(em.settings)
        every = [(row, r) for row in rows for r in range(len(get_options(row)) if args.all_rounds else 1)]
        jobs = writer.pending(every, lambda job: (str(job[0]["index"]), job[1]))  # (row, round) pairs still to answer
        for row, round_idx in tqdm(list(limit(jobs, args.max_questions)), desc="questions"):
            options = get_options(row)
            chars = list(ALL_OPTIONS[:len(options)])
            # round r: options (and their original letters) rotated left by r
            options = options[round_idx:] + options[:round_idx]
            chars = chars[round_idx:] + chars[:round_idx]
            shown = round_question(row, options)
            image = load_image_from_base64(row["image"])
            input_ids = em.input_ids(em.prompt(shown + suffix, with_image=True))
            # the pruning text is the question without the answer-format sentence, as the CDPruner authors'
            text = em.generate(input_ids, em.image_tensor([image]), [image.size], pruning_text=shown)
            writer.write(em.record(row["index"], shown, text, round_id=round_idx, options=options,
                                   option_char=chars))
    return args.answers_file


def main(argv: Optional[List[str]] = None) -> int:
    die_with_parent()
    parser = add_lock_arg(build_parser(__doc__.split("\n\n")[0], max_new_tokens=1024, image_folder_required=False,
                                       single_pred_prompt=True, probe_device=False))
    parser.add_argument("--lang", type=str, default="en", choices=("en", "cn"),
                        help="language of the --single-pred-prompt instruction")
    parser.add_argument("--all-rounds", action="store_true",
                        help="ask every question once per rotation of its options (CircularEval)")
    args = parser.parse_args(argv)
    return exit_code_of(eval_model, args)


if __name__ == "__main__":
    sys.exit(main())
