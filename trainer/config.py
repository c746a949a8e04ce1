"""One frozen training configuration, built from flags in `trainer.task` and validated once."""

import dataclasses
from typing import Optional

from trainer.errors import ConfigError
from trainer.images import DEFAULT_MAX_PIXELS
from trainer.losses import BIN_LOSSES, LOSSES
from trainer.models import MODELS
from trainer.preprocess import COLOR_SPACES

LR_SCHEDULES = ("constant", "cosine")
# Keras precision policies: mixed_float16 needs loss scaling (GPUs with float16 tensor cores);
# mixed_bfloat16 has float32's range and needs none (A100, H100, TPU-class hardware).
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    train_data: str  # glob pattern of training shards
    eval_data: str  # glob pattern of validation shards
    model_dir: str  # checkpoints and TensorBoard logs
    export_dir: str  # SavedModels, one integer version folder per export
    log_dir: str = ""  # TensorBoard; empty: {model_dir}/logs
    model: str = "unet"
    color_space: str = "lab"
    loss: str = "two_heads"  # see trainer/losses.py; classification and two_heads need color_space=lab
    base_filters: int = 32
    sync_batchnorm: bool = False  # U-Net batch statistics over all replicas
    epochs: int = 10
    batch_size: int = 32  # per replica; the global batch is this times the replica count
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"  # or "cosine": one warmup epoch, then cosine decay to 0 at the last step
    patience: int = 3  # early stopping on validation loss, as in the seed
    augment: bool = True
    shuffle_buffer: int = 2048
    checkpoint_every_steps: int = 0  # 0: checkpoint at the end of every epoch only
    precision: str = "float32"  # a Keras policy, see PRECISIONS
    jit_compile: bool = False
    fit_decode: bool = True  # fit the serving decode (a*b* scale, head blend) on eval_data: trainer/decode_fit.py
    colour_target: float = 0.6  # the decode fit's goal: this share of the truth's colourfulness
    seed: Optional[int] = None
    max_pixels: int = DEFAULT_MAX_PIXELS  # serving refuses larger images (read from their headers)
    export: bool = True

    @property
    def mixed_precision(self) -> bool:
        """Whether the optimizer is wrapped for loss scaling: the precision choice a checkpoint records."""
        return self.precision == "mixed_float16"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raises ConfigError with a one-line message naming the first invalid setting."""
        if self.model not in MODELS:
            raise ConfigError(f"--model={self.model!r}: choose one of {', '.join(MODELS)}")
        if self.color_space not in COLOR_SPACES:
            raise ConfigError(f"--color_space={self.color_space!r}: choose one of {', '.join(COLOR_SPACES)}")
        if self.loss not in LOSSES:
            raise ConfigError(f"--loss={self.loss!r}: choose one of {', '.join(LOSSES)}")
        if self.loss in BIN_LOSSES and self.color_space != "lab":
            raise ConfigError(f"--loss={self.loss} predicts a*b* bins: it needs --color_space=lab")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision={self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"--lr_schedule={self.lr_schedule!r}: choose one of {', '.join(LR_SCHEDULES)}")
        for name in ("epochs", "batch_size", "base_filters", "max_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name}={getattr(self, name)}: must be at least 1")
        if not 0.0 <= self.colour_target <= 1.0:
            raise ConfigError(f"--colour_target={self.colour_target}: must be between 0 and 1")
        if not self.learning_rate > 0:
            raise ConfigError(f"--learning_rate={self.learning_rate}: must be positive")
        for name in ("patience", "checkpoint_every_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name}={getattr(self, name)}: must not be negative")
        for name in ("train_data", "eval_data", "model_dir", "export_dir"):
            if not getattr(self, name):
                raise ConfigError(f"--{name} is empty")
