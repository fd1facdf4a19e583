from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

DESCRIPTOR: _descriptor.FileDescriptor

class GetCandidatesRequest(_message.Message):
    __slots__ = ("user_id", "history", "n", "request_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    history: _containers.RepeatedScalarFieldContainer[int]
    n: int
    request_id: str
    def __init__(
        self,
        user_id: str | None = ...,
        history: _Iterable[int] | None = ...,
        n: int | None = ...,
        request_id: str | None = ...,
    ) -> None: ...

class GetCandidatesResponse(_message.Message):
    __slots__ = ("items", "scores", "model_version", "request_id", "timing")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    model_version: str
    request_id: str
    timing: ServerTiming
    def __init__(
        self,
        items: _Iterable[int] | None = ...,
        scores: _Iterable[float] | None = ...,
        model_version: str | None = ...,
        request_id: str | None = ...,
        timing: ServerTiming | _Mapping | None = ...,
    ) -> None: ...

class ServerTiming(_message.Message):
    __slots__ = ("queue_us", "compute_us", "total_us", "batch_size")
    QUEUE_US_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    queue_us: int
    compute_us: int
    total_us: int
    batch_size: int
    def __init__(
        self,
        queue_us: int | None = ...,
        compute_us: int | None = ...,
        total_us: int | None = ...,
        batch_size: int | None = ...,
    ) -> None: ...

class GetCandidatesBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[GetCandidatesRequest]
    def __init__(
        self, requests: _Iterable[GetCandidatesRequest | _Mapping] | None = ...
    ) -> None: ...

class GetCandidatesBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[GetCandidatesResponse]
    def __init__(
        self, responses: _Iterable[GetCandidatesResponse | _Mapping] | None = ...
    ) -> None: ...
