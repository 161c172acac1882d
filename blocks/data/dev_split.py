"""A dev split carved from the train file: ``"dev": {"from_train": 0.1, "seed": 0}``.

The carved rows leave the train split, so nothing that reads train (training, vocabularies,
transfer sets) sees them. The carving is stratified by the label field's value: every label keeps
its share of the rows, rounded by largest remainder so the dev size is exactly
``round(from_train * rows)``. Labels that are (nearly) all different, as regression scores are,
make one-row strata, and the carving is then a plain random sample. It depends only on the
file's rows and the seed (not on the config's training seed), so the runs of one experiment share
their dev split.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from blocks.data.readers import Row, Rows
from blocks.errors import ConfigError, DataError


@dataclass(frozen=True)
class DevCarve:
    """Which rows of the train file form the dev split.

    Attributes:
        fraction: the share of the train file's rows that become dev (0 < fraction < 1).
        seed: the random seed of the choice.
        label: the logical label field whose values stratify the choice.
    """

    fraction: float
    seed: int
    label: str

    def describe(self) -> str:
        return f"{self.fraction * 100:g}% of the train file's rows, stratified by '{self.label}', seed {self.seed}"

    def split(self, rows: list[Row], mapping: dict, file: str) -> tuple[Rows, Rows]:
        """(train rows, dev rows), both in file order; ``mapping`` maps fields to columns."""
        if len(rows) < 2:
            raise DataError(f"a dev split carved from train needs at least 2 rows; the file has {len(rows)}", file)
        from blocks.data.dataset import field_value  # (blocks.data.dataset imports this module)

        strata: dict = {}  # label value -> row indexes; tag sequences (lists) make one stratum
        for index, row in enumerate(rows):
            value = field_value(row, self.label, mapping)
            strata.setdefault(value if isinstance(value, str) else None, []).append(index)
        total = min(len(rows) - 1, max(1, round(self.fraction * len(rows))))
        rng = random.Random(self.seed)
        exact = {key: total * len(members) / len(rows) for key, members in strata.items()}
        quota = {key: math.floor(share) for key, share in exact.items()}
        ties = {key: rng.random() for key in strata}
        by_remainder = sorted(strata, key=lambda key: (quota[key] - exact[key], ties[key]))
        for key in by_remainder[: total - sum(quota.values())]:
            quota[key] += 1
        chosen: set[int] = set()
        for key, members in strata.items():
            chosen.update(rng.sample(members, quota[key]))
        notes = getattr(rows, "notes", [])
        train = Rows((row for i, row in enumerate(rows) if i not in chosen),
                     notes + [f"less the {len(chosen):,} rows carved out as dev"])
        dev = Rows((row for i, row in enumerate(rows) if i in chosen), notes + [f"carved: {self.describe()}"])
        return train, dev


def dev_carve(data: dict) -> DevCarve | None:
    """The carving a config's ``data`` asks for (``data.dev`` with ``from_train``), else None."""
    dev = data.get("dev")
    if not isinstance(dev, dict) or "from_train" not in dev:
        return None
    return DevCarve(float(dev["from_train"]), int(dev.get("seed", 0)), data.get("label", "label"))


NO_DEV_HINT = 'give data.dev a file, or carve one from train: "dev": {"from_train": 0.1}'


def check_stages_without_dev(values: dict, file: str | None) -> None:
    """Without a dev split a stage keeps its last weights: refuse the settings that need dev scores."""
    if values["data"].get("dev") is not None:
        return
    for index, stage in enumerate(values["stages"]):
        if stage.get("early_stopping"):
            raise ConfigError(f"early_stopping watches the dev score, but the config has no dev split; {NO_DEV_HINT}",
                              file, f"/stages/{index}/early_stopping")
        if stage.get("select"):
            raise ConfigError(f"select '{stage['select']}' chooses the best checkpoint by its dev score, but the "
                              f"config has no dev split; {NO_DEV_HINT}", file, f"/stages/{index}/select")
