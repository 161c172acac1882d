"""Fingerprints of the recipes' resolved configs, so that rewriting a recipe (composing it from
fragments, moving it) provably leaves the config it resolves to unchanged.

Usage:
    python tools/recipe_fingerprints.py              # compare every recipe with tests/recipe_fingerprints.json
    python tools/recipe_fingerprints.py --write      # record the current recipes (after a deliberate change)
    python tools/recipe_fingerprints.py --lines      # recipe and fragment line counts

A fingerprint is the SHA-256 of the recipe as ``load_merged`` resolves it (``extends`` merged,
stage defaults applied), written as canonical JSON with the repository's folder replaced by
``<repo>`` and the folder above it by ``<parent>``, so the fingerprint is the same in every checkout.
The free-text ``description`` of the config and of its models is left out (it may say where a
recipe lives, which a move changes), and so is a model's ``recipe``, which only ``blocks validate``
reads (the recipe that makes a run not made yet); every setting is in.
The file maps each recipe to its fingerprint; a recipe that was moved keeps its old name as the key
and gives the new one in ``path``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blocks.config.loader import load_merged  # noqa: E402

FINGERPRINTS = ROOT / "tests" / "recipe_fingerprints.json"
RECIPE_FOLDERS = ("model_zoo", "benchmarks")
FRAGMENT_FOLDERS = ("configs",)


def recipes() -> list[Path]:
    """Every recipe (a config that trains something) under the recipe folders, demo data excluded."""
    return sorted(p for folder in RECIPE_FOLDERS for p in (ROOT / folder).rglob("*.json"))


def canonical(path: Path) -> str:
    """The resolved config as canonical JSON, independent of where the repository is."""
    values = load_merged(path)
    values.pop("description", None)
    for model in values.get("models", {}).values():
        if isinstance(model, dict):
            model.pop("description", None)
            model.pop("recipe", None)
    text = json.dumps(values, sort_keys=True, ensure_ascii=False)
    return text.replace(str(ROOT), "<repo>").replace(str(ROOT.parent), "<parent>")


def fingerprint(path: Path) -> str:
    return hashlib.sha256(canonical(path).encode("utf-8")).hexdigest()


def recorded() -> dict[str, dict]:
    return json.loads(FINGERPRINTS.read_text(encoding="utf-8"))


def differences() -> list[str]:
    """One line per recorded recipe that is missing or resolves differently now."""
    problems = []
    for name, entry in recorded().items():
        now = entry.get("path", name)
        path = ROOT / now
        if not path.is_file():
            problems.append(f"{name}: {now} is missing")
        elif fingerprint(path) != entry["sha256"]:
            problems.append(f"{name}: {now} resolves to a different config than it did")
    return problems


def line_count(folders: tuple[str, ...]) -> int:
    return sum(len(p.read_text(encoding="utf-8").splitlines())
               for folder in folders for p in (ROOT / folder).rglob("*.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="record the current recipes' fingerprints")
    parser.add_argument("--lines", action="store_true", help="print the recipe and fragment line counts")
    args = parser.parse_args()
    if args.lines:
        print(f"recipes ({', '.join(RECIPE_FOLDERS)}): {len(recipes())} files, {line_count(RECIPE_FOLDERS):,} lines; "
              f"fragments ({', '.join(FRAGMENT_FOLDERS)}): {line_count(FRAGMENT_FOLDERS):,} lines")
        return
    if args.write:
        table = {str(p.relative_to(ROOT)): {"sha256": fingerprint(p)} for p in recipes()}
        FINGERPRINTS.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        print(f"{len(table)} fingerprints written to {FINGERPRINTS.relative_to(ROOT)}")
        return
    problems = differences()
    print("\n".join(problems) or f"all {len(recorded())} recorded recipes resolve as recorded")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
