"""``GET /v1/models``'s answer, for the OpenAPI document (``service.model_list`` builds it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ModelObject(BaseModel):
    """OpenAI's model object, plus NeuroAPI's fields."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str = Field(description="The provider, \"inhouse\", or \"neuroapi\" for a mode.")
    capabilities: list[str] = Field(description="What it can do beyond plain text (tools, images, ...); for a "
                                                "mode, what at least one allowed candidate can do.")
    mode: bool | None = Field(default=None, description="True for a mode (a routed list of candidates).")
    context_length: int | None = None
    in_house: bool | None = None
    engine: str | None = Field(default=None, description="An in-house model's engine (vllm or transformers).")
    embeddings: bool | None = Field(default=None, description="True for an embedding model: POST /v1/embeddings "
                                                              "only, never chat.")
    dimensions: int | None = Field(default=None, description="An embedding model's vector length, where known.")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelObject]
