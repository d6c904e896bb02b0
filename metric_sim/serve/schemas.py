"""The request and response bodies of every route, as pydantic models with OpenAPI examples.

Items are typed ``Any`` here and checked by :class:`~metric_sim.serve.items.ItemParser`,
which knows what the loaded model takes and names the offending field; their schema
(a text, an image or a product record) is declared for the OpenAPI document.
Numbers are strict: ``"5"`` is not a ``k``, and ``true`` is not a probability.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, WithJsonSchema

__all__ = [
    "AddItemsRequest", "AddItemsResponse", "DeleteItemResponse", "EmbeddingsRequest", "EmbeddingsResponse",
    "ErrorResponse", "HealthResponse", "ItemResponse", "ReadyResponse", "SearchRequest", "SearchResponse",
    "SimilarityRequest", "SimilarityResponse",
]

ITEM_SCHEMA = {
    "anyOf": [
        {"type": "string", "description": "a text (text models)"},
        {"type": "object", "description": "an image (image models)", "required": ["image_base64"],
         "properties": {"image_base64": {"type": "string", "format": "byte"}}, "additionalProperties": False},
        {"type": "object", "description": "a product record (product models): a title and/or an image",
         "properties": {"title": {"type": "string"}, "image_base64": {"type": "string", "format": "byte"},
                        "description": {"type": "string"}}, "additionalProperties": False},
    ],
}
Item = Annotated[Any, WithJsonSchema(ITEM_SCHEMA)]
StrictFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddingsRequest(BaseModel):
    """OpenAI-compatible: ``input`` is one item or a list of items. Other OpenAI fields are ignored."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={
        "examples": [{"input": ["how do I cook rice", "best way to learn python"], "encoding_format": "float"}]})
    input: Annotated[Any, WithJsonSchema({"anyOf": [ITEM_SCHEMA, {"type": "array", "items": ITEM_SCHEMA}]})]
    model: StrictStr | None = Field(None, description="accepted for compatibility and ignored: the server has one model")
    encoding_format: Literal["float"] = "float"


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float]


class EmbeddingsResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "list", "model": "my-model",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.12, -0.03, 0.5]}],
        "usage": {"prompt_tokens": 6, "total_tokens": 6}}]})
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class SimilarityRequest(_Request):
    """Pairs of items; each answer is symmetric: ``p(a, b) == p(b, a)`` exactly."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"pairs": [["how do I cook rice", "how to cook rice"], ["buy a car", "sell a phone"]]}]})
    pairs: list[Annotated[list[Item], Field(min_length=2, max_length=2)]]


class PairResult(BaseModel):
    distance: float
    probability: float | None = Field(description="calibrated p(similar); null when the model has no calibrator")
    similar: bool | None = Field(description="distance <= threshold; null without a calibrator")


class SimilarityResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "metric": "euclidean", "threshold": 0.93,
        "results": [{"distance": 0.21, "probability": 0.97, "similar": True}]}]})
    metric: Literal["euclidean", "manhattan"]
    threshold: float | None
    results: list[PairResult]


class SearchRequest(_Request):
    """The ``k`` nearest stored items of each query; ``min_prob`` or ``max_distance`` keeps only close ones."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"queries": ["how do I cook rice"], "k": 5, "min_prob": 0.5}]})
    queries: list[Item]
    k: StrictInt = Field(5, ge=1)
    min_prob: StrictFloat | None = Field(None, ge=0.0, le=1.0)
    max_distance: StrictFloat | None = Field(None, ge=0.0)


class Neighbor(BaseModel):
    id: str
    item: str = Field(description="the stored description: the text itself for texts")
    distance: float
    probability: float | None


class SearchResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "results": [[{"id": "q17", "item": "how to cook rice", "distance": 0.12, "probability": 0.98}]]}]})
    results: list[list[Neighbor]]


class ItemEntry(_Request):
    id: StrictStr
    item: Item


class AddItemsRequest(_Request):
    """Items to add; acknowledged only once durable. A taken id adds nothing (409)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"items": [{"id": "q1", "item": "how do I cook rice"}]}]})
    items: list[ItemEntry]


class AddItemsResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"added": ["q1"], "size": 1}]})
    added: list[str]
    size: int


class DeleteItemResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"deleted": "q1", "size": 0}]})
    deleted: str
    size: int


class ItemResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"id": "q1", "item": "how do I cook rice"}]})
    id: str
    item: str


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ready", "items": 1200}]})
    status: Literal["ready"] = "ready"
    items: int


class ErrorDetail(BaseModel):
    type: str = Field(description="snake_case kind: invalid_json, invalid_type, invalid_argument, limit_exceeded, "
                                  "unauthorized, unknown_id, duplicate_id, read_only, not_ready, internal_error, ...")
    message: str | None = None
    field: str | None = Field(None, description="JSON path of the offending value, e.g. items[3].item")


class ErrorResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"error": {
        "type": "limit_exceeded", "message": "queries: the number of entries is 300, over the limit of 256",
        "field": "queries"}}]})
    error: ErrorDetail
