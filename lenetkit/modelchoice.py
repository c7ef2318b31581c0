"""Which model answers: the line naming the model file a script used, and the guard on
mnist_model.pth, the model every script uses when none is named.

A run or an export that would replace mnist_model.pth (or, where there is none, the shipped
model) with a model of another dataset, or mnist_model.pth with one that scored worse on
validation, leaves it as it is unless --force says otherwise: a quick
check must not silently become the model that every tool uses.
"""

import os
from pathlib import Path

from lenetkit.environment import DEFAULT_MODEL_PATH, PRETRAINED_MODEL_PATH
from lenetkit.errors import UserError
from lenetkit.modelfile import read_model_file


def shown_path(path: str | Path) -> str:
    """`path` as a user would type it here: relative to the working folder when inside it."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def model_line(path: str | Path, record: dict) -> str:
    """`model: mnist_model.pth (mnist, lenet, validation 99.31%)`: which model file answers."""
    score = record["metadata"].get("val_accuracy")
    scored = f", validation {score:.2%}" if isinstance(score, (int, float)) else ""
    return f"model: {shown_path(path)} ({record['dataset']}, {record['arch']}{scored})"


def is_default_model(path: str | Path) -> bool:
    """Whether `path` names mnist_model.pth, the model the scripts use when none is named."""
    path, default = Path(path), DEFAULT_MODEL_PATH
    if path.exists() and default.exists():
        return os.path.samefile(path, default)
    return path.absolute() == default.absolute()


def replacement_conflict(path: str | Path, dataset: str, val_accuracy: float | None,
                         val_size: int | None = None) -> str | None:
    """Why a model of `dataset` that scored `val_accuracy` (None: not validated) on `val_size`
    validation images should not replace the default model at `path` without --force; None when
    nothing stands in the way (another path; no model there and the shipped one of `dataset`, or
    unreadable; a damaged file there; or a model it scores at least as well as on the same
    validation images). Scores on validation splits of other sizes don't compare: one image
    right of one is 100%."""
    if not is_default_model(path):
        return None
    if not Path(path).is_file():  # every script uses the shipped model
        shipped = shipped_record()
        if shipped is None or shipped["dataset"] == dataset:
            return None
        return (f"{shown_path(path)} is not there, so every script uses the shipped "
                f"{shipped['dataset']} model; this one is {dataset}")
    try:
        kept = read_model_file(path)
    except UserError:  # a damaged or foreign file holds no model to keep
        return None
    old = kept["metadata"].get("val_accuracy")
    where = f"{shown_path(path)} (the model every script uses) holds"
    if kept["dataset"] != dataset:
        return f"{where} a {kept['dataset']} model; this one is {dataset}"
    if old is not None and val_accuracy is None:
        return f"{where} a model that scored {old:.2%} on validation; this one was not validated"
    old_size = kept["metadata"].get("val_size")
    if (old is not None and val_accuracy is not None and None not in (old_size, val_size)
            and old_size != val_size):
        return (f"{where} a model that scored {old:.2%} on {old_size:,} validation images; this "
                f"one is judged on {val_size:,}, and the scores don't compare")
    if old is not None and val_accuracy is not None and val_accuracy < old:
        return (f"{where} a model that scored better on validation: {old:.2%}, "
                f"this one {val_accuracy:.2%}")
    return None


def shipped_record() -> dict | None:
    """The shipped model's record, or None where it can't be read (the notes and checks that
    compare with it then stand aside: a run's results matter more)."""
    try:
        return read_model_file(PRETRAINED_MODEL_PATH)
    except UserError:
        return None


# A default model this far under the shipped one on validation is most likely a quick check.
BELOW_SHIPPED = 0.01


def shipped_note(path: str | Path, record: dict, val_accuracy: float | None) -> str | None:
    """What to know when `record`, which scored `val_accuracy` on validation, has just been
    written as the default model at `path`, in place of the shipped model for every script:
    that it scored more than BELOW_SHIPPED under it on as many validation images, or that,
    unlike it, it has no digit score. None otherwise (another path or dataset)."""
    shipped = shipped_record() if is_default_model(path) else None
    if shipped is None or shipped["dataset"] != record["dataset"]:
        return None
    score, size = (shipped["metadata"].get(key) for key in ("val_accuracy", "val_size"))
    lower = (val_accuracy is not None and score is not None and val_accuracy < score - BELOW_SHIPPED
             and size == record["metadata"].get("val_size"))
    unscored = "digit_score" in shipped and "digit_score" not in record
    if not lower and not unscored:
        return None
    scores = f" (validation {val_accuracy:.2%})" if val_accuracy is not None else ""
    shipped_score = f" ({score:.2%})" if lower else ""
    cost = ("; unlike it, it has no digit score, so it answers a digit for anything it is shown "
            "(a letter, a scribble): configs/robust.json trains one that has" if unscored else "")
    return (f"{shown_path(path)}{scores} is now the model every script uses, in place of the "
            f"shipped one{shipped_score}{cost}; delete or rename it to go back")


def run_path(out: Path, force: bool, resume: bool) -> Path:
    """Where a run writes its model, checkpoint, metrics and curves: `out`, unless that is the
    default model and a model is there already (and neither --force nor --resume): then the next
    free mnist_model-N.pth beside it, so that the kept model's own checkpoint and record stay."""
    if force or resume or not is_default_model(out) or not out.is_file():
        return out
    number = 2
    while any(out.with_name(f"{out.stem}-{number}{suffix}").exists()
              for suffix in (out.suffix, ".ckpt")):
        number += 1
    return out.with_name(f"{out.stem}-{number}{out.suffix}")


def check_replacement(path: str | Path, dataset: str, val_accuracy: float | None,
                      force: bool, val_size: int | None = None) -> None:
    """Refuses, with what to do instead, to replace the default model: see replacement_conflict."""
    conflict = None if force else replacement_conflict(path, dataset, val_accuracy, val_size)
    if conflict:
        raise UserError(f"{conflict}: give --out FILE to write it elsewhere, or --force to "
                        "replace it")
