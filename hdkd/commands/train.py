"""Train one model. Writes OUT/last.pt after every epoch (atomically; --resume continues from it
exactly), OUT/best.pt (chosen on the validation split), OUT/log.jsonl, plots and the test metrics
of best.pt. Multi-GPU: torchrun --nproc-per-node N -m hdkd train ..."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..distill.config import AMP_MODES, KD_KINDS, RECIPES, SELECT_METRICS, TrainConfig
from ..models import list_models
from .arguments import add_command

_D = TrainConfig()


def _recipe_help() -> str:
    t, s = RECIPES["hdkd_teacher"], RECIPES["hdkd"]
    return (f"teacher: {t['optimizer']} lr {t['lr']:g}, no schedule; hdkd_student and hdkd: "
            f"{s['optimizer']} lr {s['lr']:g}, weight decay {s['weight_decay']:g}, cosine with "
            f"{s['warmup_epochs']} warm-up epochs")


def _optional_float(text: str):
    return None if text.lower() in ("none", "off", "") else float(text)


def _config_flag(group, flag: str, help: str = "", **kwargs) -> None:
    """A flag that sets the TrainConfig field of its name (--img-size: img_size), with that field's
    default, which its help shows."""
    default = getattr(_D, flag.removeprefix("--").replace("-", "_"))
    shown = "(default: %(default)s)"
    group.add_argument(flag, default=default, help=f"{help} {shown}" if help else shown, **kwargs)


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of one training run (shared by `hdkd train` and the trainer's tests)."""
    g = p.add_argument_group("what to train")
    g.add_argument("--model", required=True, choices=list_models(),
                   help="hdkd_teacher: the CNN teacher; hdkd_student: the hybrid student from "
                        "scratch; hdkd: the student distilled from --teacher")
    g.add_argument("--data", required=True,
                   help="'digits' (the embedded demo data), an image folder (train/ and test/, "
                        "optional val/, one sub-folder per class; or one folder of class "
                        "sub-folders split by --seed), or a MedMNIST .npz file")
    g.add_argument("--teacher", default=None,
                   help="teacher checkpoint for --model hdkd: an hdkd best.pt/last.pt or a "
                        "state_dict of the original HDKD code; loaded strictly (required by "
                        "--model hdkd, not used otherwise; default: none)")
    _config_flag(g, "--out", help="output folder: last.pt, best.pt, log.jsonl, plots, metrics")
    g.add_argument("--resume", default=None, metavar="PATH",
                   help="continue exactly from a last.pt (default: start fresh)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (default: such a folder is refused)")
    g = p.add_argument_group("data")
    _config_flag(g, "--img-size", type=int,
                 help="images are resized to this square size; the student needs a multiple of 16")
    _config_flag(g, "--val-fraction", type=float,
                 help="share of the training data held out for validation when the data has no "
                      "val split")
    _config_flag(g, "--test-fraction", type=float,
                 help="share held out for testing when the data has no test split")
    g.add_argument("--folds", type=int, default=None, metavar="K",
                   help="cross-validation: split the data into K stratified folds (with --fold; "
                        "the validation split is held out of the other folds; --test-fraction "
                        "is then unused; default: no folds)")
    g.add_argument("--fold", type=int, default=None, metavar="I",
                   help="which fold, 0..K-1, is the test split of this run (default: none)")
    g.add_argument("--groups", default=None, metavar="FILE.csv",
                   help="CSV with the header image,group: the patient or lesion id of every "
                        "image (path relative to the data folder, or index for digits); no group "
                        "is split across train/val/test (default: none)")
    g.add_argument("--no-augment", dest="augment", action="store_false",
                   help="turn off the original train-time augmentation (default: on)")
    g.add_argument("--smote", action="store_true",
                   help="SMOTE-oversample minority classes of the training split (default: off)")
    g.add_argument("--smote-targets", default=None, metavar="FILE.json",
                   help="SMOTE to per-class counts instead of to the largest class: a JSON object "
                        "class name -> training images wanted (classes not named keep theirs; "
                        "implies --smote; default: none)")
    g.add_argument("--classes", type=_class_list, default=None, metavar="NAME,NAME,...",
                   help="names for the data's classes, in their order (folder names sorted, "
                        "label 0, 1, ...), stored in checkpoints and used in reports (default: "
                        "folder names, MedMNIST label names, else the label numbers; "
                        "--smote-targets names classes as the data does)")
    g.add_argument("--balanced-sampler", action="store_true",
                   help="draw training batches class-balanced (default: off)")
    _config_flag(g, "--workers", type=int, help="data-loading worker processes")
    g = p.add_argument_group("optimisation (defaults: the original recipe, " + _recipe_help() + ")")
    _config_flag(g, "--epochs", type=int)
    _config_flag(g, "--batch-size", type=int, help="images per step and per process")
    g.add_argument("--optimizer", choices=("adam", "adamw"), default=None,
                   help="(default: the recipe's for the model)")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    g.add_argument("--weight-decay", type=float, default=None, help="(default: the recipe's)")
    g.add_argument("--schedule", choices=("constant", "cosine"), default=None,
                   help="(default: the recipe's: constant for the teacher, cosine otherwise)")
    g.add_argument("--warmup-epochs", type=int, default=None,
                   help="linear warm-up epochs of the cosine schedule (default: the recipe's)")
    _config_flag(g, "--warmup-lr", type=float, help="learning rate at the start of the warm-up")
    _config_flag(g, "--min-lr", type=float, help="floor of the cosine schedule")
    g.add_argument("--clip-grad", type=_optional_float, default=_D.clip_grad,
                   help="clip the gradient norm to this value (default: no clipping)")
    g.add_argument("--ema-decay", type=_optional_float, default=_D.ema_decay,
                   help="keep an exponential moving average of the weights with this decay, "
                        "validated and saved as best.pt (default: no EMA)")
    g.add_argument("--calibrate", action="store_true",
                   help="after training, fit temperature scaling on the validation split, store "
                        "it in best.pt and report the test calibration before and after "
                        "(default: off)")
    _config_flag(g, "--select-metric", choices=SELECT_METRICS,
                 help="validation metric that picks best.pt")
    g = p.add_argument_group("distillation (--model hdkd)")
    _config_flag(g, "--distillation", choices=KD_KINDS,
                 help="logit KD: soft (KL at --tau) or hard (teacher's argmax)")
    _config_flag(g, "--alpha", type=float,
                 help="weight of the logit KD term against the label loss")
    _config_flag(g, "--tau", type=float, help="KD temperature")
    _config_flag(g, "--feature-weight", type=float,
                 help="lambda: weight of the stage-feature MSE loss")
    _config_flag(g, "--beta", type=float, help="stage i feature loss is weighted (i + 1) ** beta")
    g = p.add_argument_group("speed and reproducibility")
    _config_flag(g, "--amp", choices=AMP_MODES,
                 help="mixed precision: bf16, or fp16 with a gradient scaler")
    g.add_argument("--channels-last", action="store_true",
                   help="channels_last memory format for models and inputs (default: off)")
    g.add_argument("--compile", action="store_true", help="torch.compile the models (default: off)")
    _config_flag(g, "--device",
                 help="auto (the GPU of this process's local rank if any, else CPU), cpu, cuda or "
                      "cuda:N")
    _config_flag(g, "--backend", help="hdkd op backend: auto, torch, ext or triton")
    _config_flag(g, "--seed", type=int,
                 help="seeds the split, the initialisation, the data order and the augmentation; "
                      "a CPU run is bit-for-bit repeatable")
    g.add_argument("--sync-bn", action="store_true",
                   help="SyncBatchNorm across processes: NOT supported (the MBCSA batch norms run "
                        "inside the fused op); refused with an explanation (default: off)")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="hide the progress bars (default: shown when stderr is a terminal)")
    g.add_argument("--no-plots", dest="plots", action="store_false",
                   help="skip the PNG plots (default: written)")


def _class_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",")]


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    keys = set(TrainConfig.__dataclass_fields__)
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in keys})


def resume_command(argv: list[str], last: Path) -> str:
    """The command line that continues an interrupted `hdkd train` from last.pt."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--resume":
            skip = True
        elif not (a.startswith("--resume=") or a == "--overwrite"):
            kept.append(a)
    return shlex.join(["hdkd", *kept, "--resume", str(last)])


def _run(args: argparse.Namespace) -> int:
    from ..distill.trainer import LAST_NAME, TrainingInterrupted, train

    import torch.distributed as dist

    try:
        summary = train(config_from_args(args), resume=args.resume, overwrite=args.overwrite)
    except TrainingInterrupted as e:
        print(f"hdkd train: {e}", file=sys.stderr)
        if e.epochs_done or e.steps_done:
            print(f"continue with: {resume_command(sys.argv[1:], e.out / LAST_NAME)}",
                  file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"hdkd train: interrupted at once; {Path(args.out) / LAST_NAME} (if any) is the "
              f"last state saved, intact", file=sys.stderr)
        return 130
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"best {summary['best']['metric']} {summary['best']['value']:.4f} at epoch "
              f"{summary['best']['epoch']}; outputs in {summary['out']}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def register(sub) -> None:
    p = add_command(sub, "train", _run, description=__doc__,
                    help="train hdkd_teacher, hdkd_student or hdkd (distilled from --teacher)")
    add_training_arguments(p)
