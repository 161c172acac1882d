"""Write the small SST-2 sample that the README quick start trains on.

Usage: python tools/make_demo_sample.py [--data ../shared/data]

Takes 4,000 full sentences (at least 6 words; the SST-2 train file also holds short phrases)
from GLUE SST-2 train and 500 sentences from GLUE SST-2 dev, chosen with a fixed seed, and writes
them to model_zoo/demo/data/{train,dev}.tsv in the original format (`sentence<TAB>label`).
"""
import argparse
import csv
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def read(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[1:]


def write(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write("sentence\tlabel\n")
        for sentence, label in rows:
            handle.write(f"{sentence}\t{label}\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args()
    sst2 = Path(args.data) / "sst2"
    rng = random.Random(2019)
    train = [r for r in read(sst2 / "train.tsv") if len(r[0].split()) >= 6]
    dev = read(sst2 / "dev.tsv")
    out = ROOT / "model_zoo" / "demo" / "data"
    out.mkdir(parents=True, exist_ok=True)
    write(out / "train.tsv", rng.sample(train, 4000))
    write(out / "dev.tsv", rng.sample(dev, 500))
    print(f"wrote {out}/train.tsv (4,000 rows) and dev.tsv (500 rows)")


if __name__ == "__main__":
    main()
