import datetime

from gantry.v1 import job_pb2 as _job_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_KIND_EVAL: _ClassVar[TaskKind]
    TASK_KIND_QUANTIZE: _ClassVar[TaskKind]
    TASK_KIND_SERVE: _ClassVar[TaskKind]

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    TASK_STATE_PENDING: _ClassVar[TaskState]
    TASK_STATE_RUNNING: _ClassVar[TaskState]
    TASK_STATE_SUCCEEDED: _ClassVar[TaskState]
    TASK_STATE_FAILED: _ClassVar[TaskState]
    TASK_STATE_STOPPED: _ClassVar[TaskState]
TASK_KIND_UNSPECIFIED: TaskKind
TASK_KIND_EVAL: TaskKind
TASK_KIND_QUANTIZE: TaskKind
TASK_KIND_SERVE: TaskKind
TASK_STATE_UNSPECIFIED: TaskState
TASK_STATE_PENDING: TaskState
TASK_STATE_RUNNING: TaskState
TASK_STATE_SUCCEEDED: TaskState
TASK_STATE_FAILED: TaskState
TASK_STATE_STOPPED: TaskState

class EvalTaskSpec(_message.Message):
    __slots__ = ("job_name", "model_dir", "data_path", "targets", "max_samples")
    JOB_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIR_FIELD_NUMBER: _ClassVar[int]
    DATA_PATH_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    job_name: str
    model_dir: str
    data_path: str
    targets: _job_pb2.EvalTargets
    max_samples: int
    def __init__(self, job_name: _Optional[str] = ..., model_dir: _Optional[str] = ..., data_path: _Optional[str] = ..., targets: _Optional[_Union[_job_pb2.EvalTargets, _Mapping]] = ..., max_samples: _Optional[int] = ...) -> None: ...

class QuantizeTaskSpec(_message.Message):
    __slots__ = ("model_dir", "output_dir", "int8", "weight_only", "eval_data_path", "eval_max_samples")
    MODEL_DIR_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    INT8_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_ONLY_FIELD_NUMBER: _ClassVar[int]
    EVAL_DATA_PATH_FIELD_NUMBER: _ClassVar[int]
    EVAL_MAX_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    model_dir: str
    output_dir: str
    int8: bool
    weight_only: bool
    eval_data_path: str
    eval_max_samples: int
    def __init__(self, model_dir: _Optional[str] = ..., output_dir: _Optional[str] = ..., int8: _Optional[bool] = ..., weight_only: _Optional[bool] = ..., eval_data_path: _Optional[str] = ..., eval_max_samples: _Optional[int] = ...) -> None: ...

class ServeTaskSpec(_message.Message):
    __slots__ = ("model_dir", "port", "max_batch_size", "max_queue_delay_ms", "http_port")
    MODEL_DIR_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    HTTP_PORT_FIELD_NUMBER: _ClassVar[int]
    model_dir: str
    port: int
    max_batch_size: int
    max_queue_delay_ms: float
    http_port: int
    def __init__(self, model_dir: _Optional[str] = ..., port: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., max_queue_delay_ms: _Optional[float] = ..., http_port: _Optional[int] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("id", "kind", "state", "node", "created", "ended", "error", "eval", "quantize", "serve", "results", "endpoint", "report_json", "progress", "http_endpoint")
    class ResultsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EVAL_FIELD_NUMBER: _ClassVar[int]
    QUANTIZE_FIELD_NUMBER: _ClassVar[int]
    SERVE_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    HTTP_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: TaskKind
    state: TaskState
    node: str
    created: _timestamp_pb2.Timestamp
    ended: _timestamp_pb2.Timestamp
    error: str
    eval: EvalTaskSpec
    quantize: QuantizeTaskSpec
    serve: ServeTaskSpec
    results: _containers.ScalarMap[str, float]
    endpoint: str
    report_json: str
    progress: TaskProgress
    http_endpoint: str
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., state: _Optional[_Union[TaskState, str]] = ..., node: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[str] = ..., eval: _Optional[_Union[EvalTaskSpec, _Mapping]] = ..., quantize: _Optional[_Union[QuantizeTaskSpec, _Mapping]] = ..., serve: _Optional[_Union[ServeTaskSpec, _Mapping]] = ..., results: _Optional[_Mapping[str, float]] = ..., endpoint: _Optional[str] = ..., report_json: _Optional[str] = ..., progress: _Optional[_Union[TaskProgress, _Mapping]] = ..., http_endpoint: _Optional[str] = ...) -> None: ...

class TaskProgress(_message.Message):
    __slots__ = ("task_id", "state", "fraction", "message", "time", "figures")
    class FiguresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    FIGURES_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    state: TaskState
    fraction: float
    message: str
    time: _timestamp_pb2.Timestamp
    figures: _containers.ScalarMap[str, float]
    def __init__(self, task_id: _Optional[str] = ..., state: _Optional[_Union[TaskState, str]] = ..., fraction: _Optional[float] = ..., message: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., figures: _Optional[_Mapping[str, float]] = ...) -> None: ...
