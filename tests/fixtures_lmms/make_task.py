"""Write the tiny local lmms-eval task folder: this folder's yaml files and utils.py plus
``holov_tiny.parquet`` (solid-colour images of different aspect ratios, a colour question,
four choices). Nothing is downloaded.

    python tests/fixtures_lmms/make_task.py OUT_DIR

then run lmms-eval with ``--include_path OUT_DIR --tasks holov_tiny_gen,holov_tiny_mc``
(lmms-eval 0.7.x resolves the yaml's relative data_files path against the yaml's folder)."""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASK_FILES = ("holov_tiny_gen.yaml", "holov_tiny_mc.yaml", "utils.py")
PARQUET = "holov_tiny.parquet"
# (colour name, RGB, (width, height)): sizes differ so that 'pad' preprocessing matters.
SAMPLES = (
    ("red", (220, 30, 30), (48, 32)),
    ("green", (30, 200, 60), (32, 48)),
    ("blue", (30, 60, 220), (40, 40)),
    ("white", (250, 250, 250), (64, 24)),
)
CHOICES = [name for name, _, _ in SAMPLES]


def write_task(out_dir: str | os.PathLike) -> Path:
    """Copy the task files into ``out_dir`` and write the parquet beside them; returns the folder."""
    from datasets import Dataset, Features, Image, Sequence, Value
    from PIL import Image as PILImage

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in TASK_FILES:
        shutil.copyfile(HERE / name, out / name)
    features = Features({
        "image": Image(), "question": Value("string"), "answer": Value("string"),
        "choices": Sequence(Value("string")), "label": Value("int64"),
    })
    rows = {
        "image": [PILImage.new("RGB", size, rgb) for _, rgb, size in SAMPLES],
        "question": ["What colour is the image?"] * len(SAMPLES),
        "answer": CHOICES,
        "choices": [CHOICES] * len(SAMPLES),
        "label": list(range(len(SAMPLES))),
    }
    Dataset.from_dict(rows, features=features).to_parquet(str(out / PARQUET))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    print(write_task(parser.parse_args().out_dir))


if __name__ == "__main__":
    main()
