"""`TrainConfig`: every setting of a ProGEO training run, torch-free (the CLI builds its flags from it).

Each field carries its help text (and, where a plain `type(default)` does not parse it, argparse options) in its
metadata; `geoloc train` generates one flag per field from them (geoloc_ros/cli/train.py). Defaults are ProGEO's
published hyperparameters (Chain-Mao/ProGEO parser.py = CosPlace's); what is not in ProGEO says so. Recipes are
YAML files of field values under geoloc_ros/model/recipes/ (`load_recipe("nordland")`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PROMPT = "A photo of a X X X X street."  # ProGEO PromptLearner ctx_init
RECIPES = Path(__file__).with_name("recipes")


def parse_size(text):
    """"N", "HxW" or "H,W" -> N or [H, W] (also a YAML list or int, passed through)."""
    if isinstance(text, (list, tuple)):
        return [int(v) for v in text]
    parts = [int(v) for v in str(text).lower().replace("x", ",").split(",") if v]
    return parts[0] if len(parts) == 1 else parts


def _opt(default, help: str, group: str = "hyperparameters", flag: bool = True, **argparse_options):
    """A field with its help text, CLI group and extra argparse options (`flag=False`: no CLI flag)."""
    meta = {"help": help, "group": group, "flag": flag, "argparse": argparse_options}
    if isinstance(default, (dict, list)) or default is dict:
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


M = "model"
H = "hyperparameters"
R = "run"


@dataclass
class TrainConfig:
    # model
    arch: str = _opt("RN50", "backbone: RN50 RN101 ViT-B-16 ViT-B-32 RN-nano RN-pico ViT-nano", M)
    dim: int | None = _opt(None, "descriptor size (default: CLIP embed_dim; ProGEO --fc_output_dim 1024 for RN50)",
                           M, type=int)
    image_size: object = _opt(512, "N or HxW (ProGEO --image_size 512)", M, type=parse_size)
    pretrained: str | None = _opt(None, "open_clip tag (e.g. openai) or local weights file; none = random init",
                                  M, type=str)
    train_all_layers: bool = _opt(False, "train every layer of a pretrained backbone (ProGEO freezes the first)", M)
    freeze_cnn: int = _opt(2, "ResNet: stem..layer{N} frozen when pretrained (ProGEO --freeze_cnn 2)", M)
    freeze_trans: int = _opt(6, "ViT: conv1, ln_pre and the first N blocks frozen when pretrained "
                                "(ProGEO --freeze_trans 6)", M)
    pool_grid: list | None = _opt(None, "ResNets: GeM over the whole map and each cell of an RxC grid, concatenated "
                                        "(not in ProGEO; default: ProGEO's single GeM); stored in the checkpoint's "
                                        "architecture", M, type=parse_size, metavar="RxC")
    # CosPlace groups (ProGEO parser.py = CosPlace defaults)
    M: float = _opt(10, "CosPlace class cell size, metres")
    alpha: float = _opt(30, "CosPlace heading bin, degrees")
    N: int = _opt(5, "CosPlace: cells between classes of one group")
    L: int = _opt(2, "CosPlace: heading bins between classes of one group")
    groups_num: int = _opt(8, "CosPlace groups used (the largest), one per epoch")
    min_images_per_class: int = _opt(10, "classes with fewer images are dropped")
    # stage 1
    epochs_stage1: int = _opt(480, "stage-1 (prompt learning) epochs, one group each")
    batch_size_stage1: int = _opt(512, "stage-1 batch size")
    lr_stage1: float = _opt(0.01, "stage-1 learning rate (Adam, cosine annealing)")
    stage1_batchnorm: str = _opt("train", "BatchNorm while stage 1 embeds the images: train (ProGEO: batch "
                                 "statistics of shuffled batches) or eval (running statistics)",
                                 choices=("train", "eval"))
    prompt: str = _opt(PROMPT, "prompt with one contiguous run of X placeholders (the learned class context)", R)
    # stage 2
    epochs: int = _opt(64, "stage-2 epochs, one group each")
    iterations_per_epoch: int = _opt(10000, "stage-2 iterations per epoch")
    batch_size: int = _opt(32, "stage-2 batch size")
    lr: float = _opt(1e-5, "stage-2 network learning rate (Adam)")
    lr_schedule: str = _opt("constant", "stage-2 learning rates over the epochs: constant (ProGEO, CosPlace) or "
                                        "cosine from the start value towards 0, set at each epoch's start (so a "
                                        "resumed run matches)", choices=("constant", "cosine"))
    classifiers_lr: float = _opt(0.01, "stage-2 CosFace classifiers' learning rate (Adam)")
    weight_decay: float = _opt(0.0, "not in ProGEO: decoupled weight decay (AdamW instead of Adam when > 0)")
    ema_decay: float = _opt(0.0, "not in ProGEO: when > 0, an exponential moving average of the weights (and "
                                 "BatchNorm statistics), updated every step with this decay, is what each epoch "
                                 "evaluates and saves")
    cosface_s: float = _opt(30.0, "CosFace scale s")
    cosface_m: float = _opt(0.40, "CosFace margin m")
    i2t_weight: float = _opt(1.0, "weight of the image-to-text loss")
    label_smoothing: float = _opt(0.1, "label smoothing of the image-to-text loss")
    # augmentation (ProGEO parser.py)
    brightness: float = _opt(0.7, "colour jitter: brightness")
    contrast: float = _opt(0.7, "colour jitter: contrast")
    saturation: float = _opt(0.7, "colour jitter: saturation")
    hue: float = _opt(0.5, "colour jitter: hue")
    random_resized_crop: float = _opt(0.5, "random resized crop: scale (1 - this)..1")
    hflip: float = _opt(0.0, "not in ProGEO: probability of a horizontal flip per training image")
    histogram_swap: float = _opt(0.0, "not in ProGEO: probability that an image takes the grey-level distribution "
                                      "of another image of the batch (histogram matching by rank)")
    same_class_cutmix: float = _opt(0.0, "not in ProGEO: probability that a rectangle (30-80%% of each side) of "
                                         "another image of the same class is pasted at the same place (CutMix "
                                         "within a class, label unchanged; for aligned sequences such as Nordland)")
    pair_weight: float = _opt(0.0, "not in ProGEO: when > 0, batches of batch_size/2 classes x 2 images and an "
                                   "image-to-image InfoNCE loss between the halves, with this weight")
    pair_temperature: float = _opt(0.1, "temperature of the image-to-image loss")
    whiten: bool = _opt(False, "not in ProGEO: after stage 2, fold learned whitening from same-class image pairs "
                               "into the projection (geoloc_ros.model.whitening)", R)
    whiten_reg: float = _opt(0.1, "whitening regulariser: fraction of the mean eigenvalue added to the covariance")
    whiten_max_pairs: int = _opt(20000, "at most this many pairs for the whitening")
    # misc
    seed: int = _opt(0, "random seed (every epoch's draws derive from seed, stage and epoch)")
    device: str = _opt("auto", "torch device: auto, cpu, cuda, cuda:1, ...", R)
    use_amp16: bool = _opt(False, "CUDA mixed precision: fp16 autocast with a gradient scaler", R)
    # bf16: on this project's 2-core AMX Xeon a stage-2 step of the Nordland recipe takes half the fp32 time
    # (docs/benchmarks.md, "Training step")
    bf16: bool = _opt(False, "not in ProGEO: bf16 autocast of convolutions and matmuls where the device has "
                             "native bf16 (AMX/AVX512-BF16 CPUs, recent GPUs), else fp32; weights, optimiser state, "
                             "losses and whitening stay fp32 (on in the Nordland recipe)", R,
                      action="boolean_optional")
    # oneDNN (CPU) and cuDNN run convolutions NHWC natively, so an NCHW network pays a layout reorder around every
    # convolution (on the CPU the network's fp32 pass took 1.5x as long). Same arithmetic.
    data_workers: int = _opt(0, "DataLoader worker processes that read and decode the training images from their paths "
                             "(0: all images decoded into memory first, the small-set path)", R)
    channels_last: bool = _opt(True, "ResNets train channels-last", R, flag=False)
    skip_blank: bool = _opt(True, "drop uniform frames (recording artefacts) from training", R, flag=False)
    extra: dict = _opt(dict, "free-form", R, flag=False)

    def to_dict(self):
        return dataclasses.asdict(self)


def config_fields():
    """The TrainConfig fields, in declaration order."""
    return dataclasses.fields(TrainConfig)


def load_recipe(name_or_path) -> dict:
    """The TrainConfig values of a bundled recipe (`nordland`) or of a YAML file; unknown keys are refused."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES / f"{name_or_path}.yaml"
    values = yaml.safe_load(path.read_text()) or {}
    names = {f.name for f in config_fields()}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{path}: not TrainConfig fields: {unknown}")
    return values
