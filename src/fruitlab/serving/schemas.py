"""The JSON the API answers with (these models also make the OpenAPI docs at /docs)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class Error(BaseModel):
    detail: str = Field(description="what was wrong, for a person to read")


class LabelProbability(BaseModel):
    label: str
    probability: float


class ModelInfo(BaseModel):
    name: str
    version: str
    uri: str
    loaded_at: str


class ImagePrediction(BaseModel):
    filename: str = Field(description="as sent by the client (echoed only)")
    sha256: str
    bytes: int
    width: int
    height: int
    format: str = Field(description="what the content is, e.g. JPEG, whatever the file name says")
    label: str = Field(description="the top label; several tasks: their top labels joined by ' / '")
    tasks: dict[str, list[LabelProbability]] = Field(description="per task, the top-k labels, best first")


class PredictResponse(BaseModel):
    request_id: str
    model: ModelInfo
    latency_ms: float = Field(description="decoding, waiting and predicting, before the log write")
    tag: str | None
    predictions: list[ImagePrediction]


class LoggedPrediction(BaseModel):
    id: int
    request_id: str
    item: int
    created_at: datetime
    sha256: str
    bytes: int
    width: int
    height: int
    format: str
    model_name: str
    model_version: str
    label: str
    labels: dict[str, str]
    probabilities: dict[str, dict[str, float]]
    latency_ms: float
    client_tag: str | None


class PredictionPage(BaseModel):
    total: int
    page: int
    per_page: int
    items: list[LoggedPrediction]


class Ready(BaseModel):
    status: str
    model: ModelInfo


class ReloadResult(BaseModel):
    changed: bool
    previous_version: str | None
    model: ModelInfo
