"""The trainer's settings, written once: frozen dataclasses whose fields carry their flag's help.

`define_flags` turns the fields into absl flags and `config_from_flags` reads them back, so a
setting's name, default and choices exist in one place. TensorFlow-free: `trainer.launch` checks a
run's `--arg` values against these same definitions without loading TensorFlow.
"""

import dataclasses
import os
import re
import typing
from typing import Any, Callable, Mapping, Optional

from absl import flags

from trainer.errors import ConfigError
from trainer.serve.limits import DEFAULT_MAX_PIXELS, STARTER

MODELS = ("autoencoder", "unet", "unet_global")
COLOR_SPACES = ("rgb", "lab")
LOSSES = ("mse", "l1", "huber", "classification", "two_heads")
REGRESSION_SPACES = ("ab", "rgb")
BIN_LOSSES = ("classification", "two_heads")  # the losses that need bin logits and rebalancing weights
LR_SCHEDULES = ("constant", "cosine")
# Keras precision policies: mixed_float16 needs loss scaling (GPUs with float16 tensor cores);
# mixed_bfloat16 has float32's range and needs none (A100, H100, TPU-class hardware).
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device")

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sample")
DEFAULT_RUN_DIR = os.path.join("runs", "colorizer")
# Adam's first steps from fresh moments move every weight by about the learning rate: a tenth of
# the from-scratch rate keeps what the weights already know (docs/QUALITY.md, "Fine-tuning").
FINE_TUNE_LEARNING_RATE = 1e-4
# Unset output flags fall back to Vertex AI's variables, then to ./runs/colorizer/.
ENVIRONMENT_FALLBACKS = {
    "model_dir": ("AIP_CHECKPOINT_DIR", os.path.join(DEFAULT_RUN_DIR, "model")),
    "export_dir": ("AIP_MODEL_DIR", os.path.join(DEFAULT_RUN_DIR, "export")),
    "tensorboard_dir": ("AIP_TENSORBOARD_LOG_DIR", ""),
}


def _setting(default, help_text: str, choices=None, flag_default=dataclasses.MISSING):
    """A field with its flag's help; `flag_default` if the flag's default differs (None: filled in later)."""
    metadata = {
        "help": help_text,
        "choices": choices,
        "flag_default": default if flag_default is dataclasses.MISSING else flag_default,
    }
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


_REQUIRED = dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What a run computes: data, model, optimisation and outputs. Validated once, on creation."""

    train_data: str = _setting(
        _REQUIRED, "Glob of training shards.", flag_default=os.path.join(SAMPLE_DIR, "train-*.tfrecord")
    )
    eval_data: str = _setting(
        _REQUIRED,
        "Glob of validation shards (early stopping, the decode fit).",
        flag_default=os.path.join(SAMPLE_DIR, "validation-*.tfrecord"),
    )
    model_dir: str = _setting(
        _REQUIRED, "Checkpoints and logs [$AIP_CHECKPOINT_DIR or ./runs/colorizer/model].", flag_default=None
    )
    export_dir: str = _setting(
        _REQUIRED, "SavedModel versions [$AIP_MODEL_DIR or ./runs/colorizer/export].", flag_default=None
    )
    tensorboard_dir: str = _setting(
        "", "TensorBoard logs [$AIP_TENSORBOARD_LOG_DIR or {model_dir}/logs].", flag_default=None
    )
    model: str = _setting(
        "unet",
        "autoencoder: the seed's model; unet: skip connections; unet_global: plus an image-level "
        "vector fused at the bottleneck (against whole-photo colour casts).",
        MODELS,
    )
    color_space: str = _setting(
        "lab", "rgb: predict RGB (the seed); lab: predict a*b*, keep L*.", COLOR_SPACES
    )
    # None: two_heads with lab, mse with rgb (filled in on creation: the seed's rgb recipe needs no --loss).
    loss: Optional[str] = _setting(
        None,
        "two_heads: a*b* bins and regression (lab); mse, l1, huber on the targets; "
        "classification over a*b* bins (lab) [two_heads with --color_space=lab, mse "
        "with rgb].",
        LOSSES,
    )
    regression_space: str = _setting(
        "ab",
        "With --color_space=lab, where mse and two_heads' regression head compare colours: ab "
        "(a*b* / 128), or rgb (both a*b* joined with the input's L* and converted to sRGB, the "
        "space PSNR is measured in).",
        REGRESSION_SPACES,
    )
    base_filters: int = _setting(32, "Filters of the U-Net's first level (doubled at each level).")
    sync_batchnorm: bool = _setting(
        False, "U-Net batch statistics over the global batch, not each replica's."
    )
    epochs: int = _setting(10, "Epochs (passes over the training split).")
    batch_size: int = _setting(32, "Batch size PER REPLICA; the global batch is this times the replicas.")
    learning_rate: float = _setting(
        1e-3, "Adam learning rate [the seed's 1e-3; 1e-4 when the run starts from --init_from's weights]."
    )
    lr_schedule: str = _setting(
        "constant", "constant, or cosine: a warmup epoch, then decay to 0.", LR_SCHEDULES
    )
    patience: int = _setting(3, "Early stopping: epochs without validation improvement (0: off).")
    augment: bool = _setting(True, "Random left-right flips of training pairs.")
    shuffle_buffer: int = _setting(2048, "Examples in the training shuffle buffer (host memory: 57 KB each).")
    checkpoint_every_steps: int = _setting(0, "Also checkpoint every N steps (0: at epoch ends only).")
    precision: str = _setting(
        "float32",
        "mixed_float16: float16 compute with loss scaling (V100/T4-class tensor "
        "cores); mixed_bfloat16: no loss scaling (A100/H100). Colour conversions stay float32.",
        PRECISIONS,
    )
    jit_compile: bool = _setting(False, "Compile the train step with XLA.")
    log_every_seconds: int = _setting(
        60, "Inside an epoch, a progress line (step, loss, images/s, the epoch's ETA) this often (0: off)."
    )
    profile_steps: str = _setting(
        "", "A,B: write a TensorBoard profile of training steps A to B into the log dir (chief only)."
    )
    fit_decode: bool = _setting(
        True,
        "After training, fit the a*b* scale (and two heads' blend) on --eval_data and "
        "export it with the model (trainer/train/decode_fit.py).",
    )
    colour_target: float = _setting(
        0.6,
        "Decode fit: reach this share of the truth's colourfulness on --eval_data, "
        "at the least PSNR, within 0.5 dB of the most accurate setting (0: accuracy only).",
    )
    seed: Optional[int] = _setting(
        None, "Random seed of shuffles and flips (unset: a different run each time)."
    )
    init_from: str = _setting(
        "",
        "Start a new run from these weights with a fresh optimizer: starter (the model shipped in "
        "the package; a path of that name wins), an export, a model_dir or a checkpoint of the same "
        "architecture. A run that resumes ignores it (its weights come from its checkpoint) [starter "
        "when neither --train_data nor an architecture flag is given, else none].",
        flag_default=None,
    )
    max_pixels: int = _setting(
        DEFAULT_MAX_PIXELS,
        "Serving refuses images with more pixels (read from their headers), before decoding them.",
    )

    @property
    def mixed_precision(self) -> bool:
        """Whether the optimizer is wrapped for loss scaling: the precision choice a checkpoint records."""
        return self.precision == "mixed_float16"

    @property
    def profile_range(self) -> Optional[tuple]:
        """(first, last) step of --profile_steps, or None."""
        if not self.profile_steps:
            return None
        first, last = self.profile_steps.replace(" ", "").split(",")
        return int(first), int(last)

    @property
    def log_dir(self) -> str:
        """Where TensorBoard logs go: --tensorboard_dir, else {model_dir}/logs."""
        return self.tensorboard_dir or os.path.join(self.model_dir, "logs")

    def __post_init__(self):
        if self.loss is None:
            object.__setattr__(self, "loss", "two_heads" if self.color_space == "lab" else "mse")
        self.validate()

    def validate(self) -> None:
        """Raises ConfigError with a one-line message naming the first invalid setting."""
        for field in dataclasses.fields(self):
            choices, value = field.metadata["choices"], getattr(self, field.name)
            if choices and value not in choices:
                raise ConfigError(f"--{field.name}={value!r}: choose one of {', '.join(choices)}")
        if self.loss in BIN_LOSSES and self.color_space != "lab":
            raise ConfigError(
                f"--loss={self.loss} predicts a*b* bins: it needs --color_space=lab (with rgb, "
                "pass --loss=mse, l1 or huber)"
            )
        if self.regression_space == "rgb" and (
            self.color_space != "lab" or self.loss not in ("mse", "two_heads")
        ):
            raise ConfigError(
                f"--regression_space=rgb converts a*b* to sRGB: it needs --color_space=lab and "
                f"--loss=mse or two_heads, not {self.color_space} and {self.loss}"
            )
        for name in ("epochs", "batch_size", "base_filters", "max_pixels", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name}={getattr(self, name)}: must be at least 1")
        if not 0.0 <= self.colour_target <= 1.0:
            raise ConfigError(f"--colour_target={self.colour_target}: must be between 0 and 1")
        if not self.learning_rate > 0:
            raise ConfigError(f"--learning_rate={self.learning_rate}: must be positive")
        if self.profile_steps and not re.fullmatch(r"\d+,\d+", self.profile_steps.replace(" ", "")):
            raise ConfigError(f"--profile_steps={self.profile_steps!r}: expected A,B (two step numbers)")
        if self.profile_range and self.profile_range[0] >= self.profile_range[1]:
            raise ConfigError(f"--profile_steps={self.profile_steps}: A must be below B")
        for name in ("patience", "checkpoint_every_steps", "log_every_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name}={getattr(self, name)}: must not be negative")
        for name in ("train_data", "eval_data", "model_dir", "export_dir"):
            if not getattr(self, name):
                raise ConfigError(f"--{name} is empty")


LOG_FORMATS = ("text", "json")


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """How this process finds and waits for its peers and reports: nothing a checkpoint depends on."""

    strategy: str = _setting(
        "auto",
        "auto: MultiWorkerMirrored when TF_CONFIG or an Indexed Job names peers, else Mirrored.",
        STRATEGIES,
    )
    peer_timeout_seconds: int = _setting(600, "How long to wait for every peer's DNS name to resolve.")
    collective_timeout_seconds: int = _setting(
        0,
        "Debugging only: fail a collective after this long (0: never; TF "
        "starts a thread per collective for the whole timeout). A dead peer "
        "is detected without it.",
    )

    log_format: str = _setting(
        "text",
        "text, or json: one JSON object a line with severity, message and the epoch's numbers (Cloud "
        "Logging; the k8s manifests set it).",
        LOG_FORMATS,
    )

    def __post_init__(self):
        for name, choices in (("strategy", STRATEGIES), ("log_format", LOG_FORMATS)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"--{name}={getattr(self, name)!r}: choose one of {', '.join(choices)}")


_DEFINE: dict[Any, Callable[..., Any]] = {
    str: flags.DEFINE_string,
    bool: flags.DEFINE_bool,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
}


def _flag_type(field: dataclasses.Field) -> Any:
    """int for Optional[int]; the field's own type otherwise."""
    args = [a for a in typing.get_args(field.type) if a is not type(None)]
    return args[0] if args else field.type


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines every flag of `python -m trainer.task` on `flag_values`, from the two configs' fields."""
    for config_class in (TrainConfig, ClusterConfig):
        for field in dataclasses.fields(config_class):
            meta = field.metadata
            if meta["choices"]:
                flags.DEFINE_enum(
                    field.name, meta["flag_default"], meta["choices"], meta["help"], flag_values=flag_values
                )
            else:
                _DEFINE[_flag_type(field)](
                    field.name, meta["flag_default"], meta["help"], flag_values=flag_values
                )
    flags.DEFINE_bool(
        "mixed_precision", False, "Alias of --precision=mixed_float16.", flag_values=flag_values
    )


def _precision(flag_values: flags.FlagValues) -> str:
    """--precision, or mixed_float16 when the older --mixed_precision is set (the manifests pass it)."""
    if not flag_values.mixed_precision:
        return flag_values.precision
    if flag_values.precision not in ("float32", "mixed_float16"):
        raise ConfigError(
            f"--mixed_precision means --precision=mixed_float16, not "
            f"--precision={flag_values.precision}: pass one of them"
        )
    return "mixed_float16"


def _fine_tunes_starter(flag_values: flags.FlagValues) -> bool:
    """The zero-flag run (bundled sample, default architecture) starts from the packaged starter."""
    chosen = ("train_data", "model", "color_space", "loss", "regression_space", "base_filters")
    return not any(flag_values[name].present for name in chosen)


def config_from_flags(flag_values: flags.FlagValues, environ: Mapping[str, str]) -> tuple:
    """(TrainConfig, ClusterConfig) from parsed flags; unset outputs from ENVIRONMENT_FALLBACKS."""
    values: dict[str, Any] = {f.name: flag_values[f.name].value for f in dataclasses.fields(TrainConfig)}
    for name, (variable, default) in ENVIRONMENT_FALLBACKS.items():
        values[name] = values[name] or environ.get(variable) or default
    values["precision"] = _precision(flag_values)
    if values["init_from"] is None:
        values["init_from"] = STARTER if _fine_tunes_starter(flag_values) else ""
    if values["init_from"] and not flag_values["learning_rate"].present:
        values["learning_rate"] = FINE_TUNE_LEARNING_RATE
    cluster: dict[str, Any] = {f.name: flag_values[f.name].value for f in dataclasses.fields(ClusterConfig)}
    return TrainConfig(**values), ClusterConfig(**cluster)
