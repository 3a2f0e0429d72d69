"""The model block of a run file: the network, its weights, its input size and top."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from headstart.config.strict import Strict


class ModelSpec(Strict):
    """The network every stage trains: a zoo name (Keras alias or timm name) and its weights."""

    name: str
    weights: str | None = Field(None, description='"imagenet", a .safetensors/.pth file, or none')
    image_size: int | None = Field(
        None, gt=0, description="side in pixels fed to the network; default: the model's own"
    )
    in_chans: int = Field(3, gt=0)
    pooling: Literal["avg", "max", "flatten", "none"] = Field(
        "avg", description="none keeps the 4-D feature map: only pretext heads that read it can sit on top"
    )
    include_top: bool = Field(
        False,
        description="true: keep the full classifier and put each stage's head on its outputs (the chapter's "
        "listing 2-21, Dense(4) on EfficientNetB4(classes=100)); false: heads read pooled features",
    )
    classes: int | None = Field(
        None,
        gt=0,
        description="outputs of the full classifier with include_top (Keras' classes=); default: the "
        "pretrained count, 1000 for ImageNet",
    )

    @model_validator(mode="before")
    @classmethod
    def _none_weights(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("weights"), str) and values["weights"].lower() == "none":
            values = {**values, "weights": None}
        return values

    @model_validator(mode="after")
    def _classes_need_the_top(self) -> ModelSpec:
        if self.classes is not None and not self.include_top:
            raise ValueError(
                "classes sizes the full classifier; set include_top: true, or remove classes "
                "(a stage's head follows the data's classes)"
            )
        return self


__all__ = ["ModelSpec"]
