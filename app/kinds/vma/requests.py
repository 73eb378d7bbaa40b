"""VMA requests: the bodies of adding exemplars, sampling and classifying, with their checks.

Drawings are decoded and binarised in `app.kinds.vma.images`; the schema documents them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, WithJsonSchema

from app.api.schemas import Count, Text
from app.errors import InvalidImage

MAX_LABEL_CHARS = 200
# The most z samples a classify request may ask per drawing (the worker's memory budget
# reserves room for one drawing at this many).
MAX_SAMPLES = 256

# A 28 x 28 drawing of an "F", dark ink on white: the examples' drawing.
EXAMPLE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAAALklEQVR42mP8z4AbMDEMMkkWOIsRIfifisYiGUc3r8B985/"
    "axv4f7PHJOKRSHwCuKwY7wkTbzwAAAABJRU5ErkJggg=="
)
# Standard base64 with its padding (app.kinds.vma.images decodes it strictly) of a PNG, JPEG or
# WebP, bare or as a data URL (docs/drawings.md).
_PNG_SCHEMA = {
    "type": "string",
    "pattern": "^(?:data:image/(?:[Pp][Nn][Gg]|[Jj][Pp][Ee]?[Gg]|[Ww][Ee][Bb][Pp]);base64,)?"
    "(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
}
# Pixel arrays are checked with numpy in app.kinds.vma.images (one clear message per item).
_PIXELS_ROW = {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}, "minItems": 28}
_PIXELS_SCHEMA = {"type": "array", "items": {**_PIXELS_ROW, "maxItems": 28}, "minItems": 28, "maxItems": 28}
Pixels = Annotated[Any, WithJsonSchema(_PIXELS_SCHEMA)]
# A label's length is checked in app.kinds.vma.exemplar_routes (a 422 `invalid-image` naming the item).
_LABEL_SCHEMA = {
    "anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_LABEL_CHARS}, {"type": "integer"}],
    "description": f"class label, 1 to {MAX_LABEL_CHARS} characters (numbers are taken as strings)",
}
Label = Annotated[Text | Annotated[int, Strict()], WithJsonSchema(_LABEL_SCHEMA)]


class ImageItem(BaseModel):
    """One drawing: a base64 PNG, JPEG or WebP (any size, grey or colour; bare or as a data URL) or
    28 x 28 numbers in [0, 1] (1 = ink); see docs/drawings.md."""

    # Exactly one of the two (app.kinds.vma.images refuses both and neither with a 422 naming the item).
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"oneOf": [{"required": ["image"]}, {"required": ["pixels"]}]}
    )

    image: Annotated[Text | None, WithJsonSchema(_PNG_SCHEMA)] = Field(
        None, description="base64 PNG, JPEG or WebP, bare or as a data: URL"
    )
    pixels: Pixels = Field(None, description="28 x 28 numbers in [0, 1], 1 = ink")


class ExemplarItem(ImageItem):
    label: Label


def _all_given(*names: str) -> dict[str, Any]:
    """JSON Schema: every one of `names` is given and not null."""
    return {"required": list(names), "properties": {n: {"not": {"type": "null"}} for n in names}}


_IMPORTANCE_WITHOUT_SAMPLES: dict[str, Any] = {
    "required": ["method", "samples"],
    "properties": {"method": {"const": "importance"}, "samples": {"const": 0}},
}


class AddExemplars(BaseModel):
    """`POST /v1/sessions/{sid}/exemplars`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"exemplars": [{"image": EXAMPLE_PNG, "label": "f"}]}]},
    )

    exemplars: list[ExemplarItem] = Field(min_length=1, description="at most 256 per request")


MAX_TEMPERATURE = 2.0  # beyond it samples are noise, not drawings


class SampleRequest(BaseModel):
    """`POST /v1/sessions/{sid}/samples`: a ~ p(a|M) (or among one label's / one exemplar), z, x."""

    # A label or an exemplar, not both (app.kinds.vma.routes refuses both with a 422).
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "not": _all_given("label", "exemplar_id"),
            "examples": [
                {"n": 8, "label": "a", "seed": 7},
                {"n": 2, "format": "probs", "temperature": 1.0, "anchor": 0.0},
            ],
        },
    )

    n: Annotated[int, Strict()] = Field(8, ge=1, le=64, description="number of samples")
    label: Label | None = Field(None, description="sample from the exemplars of this label only")
    exemplar_id: Count | None = Field(None, description="sample from this exemplar only")
    seed: Count | None = Field(None, description="the same seed gives the same samples")
    temperature: float | None = Field(
        None,
        ge=0.0,
        le=MAX_TEMPERATURE,
        allow_inf_nan=False,
        description="z = mean + temperature x sd x noise under p(z|m_a): below 1 the samples stay nearer the "
        "exemplar's character, above 1 they vary more, 0 gives the mean drawing. Default: the model's "
        "measured choice (its card's `serving.sample_temperature`, 1 when it names none)",
    )
    anchor: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="how far the mean of z moves from p(z|m_a)'s toward the z that redraws the exemplar "
        "itself: 0 is the model's own prior (samples vary around its average drawing of the character), "
        "1 varies them around the exemplar's own style. Default: the model's measured choice (its "
        "card's `serving.sample_anchor`, 0 when it names none)",
    )
    format: Literal["png", "probs"] = Field("png", description="base64 PNG or 28 x 28 ink probabilities")


class ClassifyRequest(BaseModel):
    """`POST /v1/sessions/{sid}/classify`."""

    # The importance method weighs decoder samples: `samples: 0` with it is a 422 (app.kinds.vma.routes).
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "not": _IMPORTANCE_WITHOUT_SAMPLES,
            "examples": [{"images": [{"image": EXAMPLE_PNG}], "top_k": 3}],
        },
    )

    images: list[ImageItem] = Field(min_length=1, description="at most 64 drawings")
    method: Literal["posterior", "importance"] = Field(
        "posterior", description="p(c|x) from q(a|x) alone, or importance-weighted with the decoder"
    )
    samples: Annotated[int, Strict()] | None = Field(
        None,
        ge=0,
        le=MAX_SAMPLES,
        description="decoder evaluations per image for the likelihood bound (and the importance scores, "
        "and a `bound` novelty rule); 0: addressing only, no bound. Default: 16 (importance); posterior: 0, "
        "or 1 for a model whose novelty rule is on the bound",
    )
    top_k: Annotated[int, Strict()] = Field(5, ge=1, le=64, description="top addresses to report")
    seed: Count | None = Field(None, description="seed of the z samples")


def parse_label(value: str | int, where: str) -> str:
    """A label as stored: numbers are taken as strings; 1 to MAX_LABEL_CHARS characters."""
    label = str(value)
    if not label or len(label) > MAX_LABEL_CHARS:
        raise InvalidImage(f"{where}: a label is 1 to {MAX_LABEL_CHARS} characters", at=where)
    return label
