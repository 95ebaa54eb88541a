"""Benchmark scorers for LLaVA-style answer files (our implementations of the official metrics).

One module per benchmark, each with a pure ``score(...) -> dict`` and a CLI
``python -m llava.eval.scoring.<module> --answers-file A.jsonl ... --result-file OUT.json``
(see each module's docstring for its flags and the official evaluator whose figures its default
equals; ``docs/scorers.md`` has the summary):

=========  ===========================================  =======================================
module     headline                                     server / submission file
=========  ===========================================  =======================================
vqav2      VQA soft accuracy % (local: val annotations)  EvalAI ``[{question_id, answer}]``
textvqa    VQA soft accuracy % on val                    -
gqa        exact-match accuracy % on testdev-balanced    ``testdev_balanced_predictions.json``
pope       mean F1 % over adversarial/popular/random     -
mme        perception + cognition (also each alone)      -
scienceqa  IMG-accuracy % (SQA-IMG)                      -
mmbench    CircularEval accuracy % (MMB and MMB-CN)      upload .xlsx / .tsv with prediction
seed       Total accuracy % (image + video questions)     leaderboard JSONL
vizwiz     VQA soft accuracy % (local: val annotations)  EvalAI ``[{image, answer}]``
=========  ===========================================  =======================================

vqav2, textvqa, gqa, scienceqa and seed also take ``--parser {official,lenient}``: the default
gives exactly the official figures; ``lenient`` adds our broader answer reading beside them
(result keys ``parser`` and ``lenient``, see :mod:`scoring_io`).

Shared pieces: :mod:`vqa_normalize` (official VQA answer processing and soft accuracy),
:mod:`choices` (option-letter parsing), :mod:`scoring_io` (reading answers, coverage checks,
the result file ``{"benchmark", "headline", "metrics", "n"}``).
"""

BENCHMARK_MODULES = ("vqav2", "textvqa", "gqa", "pope", "mme", "scienceqa", "mmbench", "seed",
                     "vizwiz")
