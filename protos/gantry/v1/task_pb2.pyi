import datetime

from gantry.v1 import job_pb2 as _job_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_KIND_EVAL: _ClassVar[TaskKind]
    TASK_KIND_QUANTIZE: _ClassVar[TaskKind]
    TASK_KIND_SERVE: _ClassVar[TaskKind]
    TASK_KIND_LOADTEST: _ClassVar[TaskKind]

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
TASK_KIND_LOADTEST: TaskKind
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
    __slots__ = ("model_dir", "port", "max_batch_size", "max_queue_delay_ms", "http_port", "engine_cpus", "stream_interval", "prefix_cache_mb")
    MODEL_DIR_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    HTTP_PORT_FIELD_NUMBER: _ClassVar[int]
    ENGINE_CPUS_FIELD_NUMBER: _ClassVar[int]
    STREAM_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_MB_FIELD_NUMBER: _ClassVar[int]
    model_dir: str
    port: int
    max_batch_size: int
    max_queue_delay_ms: float
    http_port: int
    engine_cpus: str
    stream_interval: int
    prefix_cache_mb: int
    def __init__(self, model_dir: _Optional[str] = ..., port: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., max_queue_delay_ms: _Optional[float] = ..., http_port: _Optional[int] = ..., engine_cpus: _Optional[str] = ..., stream_interval: _Optional[int] = ..., prefix_cache_mb: _Optional[int] = ...) -> None: ...

class LoadTestTaskSpec(_message.Message):
    __slots__ = ("target", "kind", "method", "streaming", "bodies", "token", "timeout_s", "prompt_set", "open_loop", "phases", "arrival", "seed", "concurrency", "warmup_s", "run_s", "requests", "worker", "workers", "slo_ttft_ms", "slo_latency_ms", "start_unix_s", "body_count", "metadata", "tls", "client_streaming")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    BODIES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    PROMPT_SET_FIELD_NUMBER: _ClassVar[int]
    OPEN_LOOP_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    WARMUP_S_FIELD_NUMBER: _ClassVar[int]
    RUN_S_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    SLO_TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    SLO_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    START_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    BODY_COUNT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_STREAMING_FIELD_NUMBER: _ClassVar[int]
    target: str
    kind: str
    method: str
    streaming: bool
    bodies: _containers.RepeatedScalarFieldContainer[bytes]
    token: str
    timeout_s: float
    prompt_set: str
    open_loop: bool
    phases: _containers.RepeatedCompositeFieldContainer[LoadPhase]
    arrival: str
    seed: int
    concurrency: int
    warmup_s: float
    run_s: float
    requests: int
    worker: int
    workers: int
    slo_ttft_ms: float
    slo_latency_ms: float
    start_unix_s: float
    body_count: int
    metadata: _containers.RepeatedCompositeFieldContainer[LoadMetadata]
    tls: LoadTls
    client_streaming: bool
    def __init__(self, target: _Optional[str] = ..., kind: _Optional[str] = ..., method: _Optional[str] = ..., streaming: _Optional[bool] = ..., bodies: _Optional[_Iterable[bytes]] = ..., token: _Optional[str] = ..., timeout_s: _Optional[float] = ..., prompt_set: _Optional[str] = ..., open_loop: _Optional[bool] = ..., phases: _Optional[_Iterable[_Union[LoadPhase, _Mapping]]] = ..., arrival: _Optional[str] = ..., seed: _Optional[int] = ..., concurrency: _Optional[int] = ..., warmup_s: _Optional[float] = ..., run_s: _Optional[float] = ..., requests: _Optional[int] = ..., worker: _Optional[int] = ..., workers: _Optional[int] = ..., slo_ttft_ms: _Optional[float] = ..., slo_latency_ms: _Optional[float] = ..., start_unix_s: _Optional[float] = ..., body_count: _Optional[int] = ..., metadata: _Optional[_Iterable[_Union[LoadMetadata, _Mapping]]] = ..., tls: _Optional[_Union[LoadTls, _Mapping]] = ..., client_streaming: _Optional[bool] = ...) -> None: ...

class LoadMetadata(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class LoadTls(_message.Message):
    __slots__ = ("ca_pem", "cert_pem", "key_pem", "insecure", "server_name")
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    INSECURE_FIELD_NUMBER: _ClassVar[int]
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    insecure: bool
    server_name: str
    def __init__(self, ca_pem: _Optional[bytes] = ..., cert_pem: _Optional[bytes] = ..., key_pem: _Optional[bytes] = ..., insecure: _Optional[bool] = ..., server_name: _Optional[str] = ...) -> None: ...

class LoadPhase(_message.Message):
    __slots__ = ("start_rate", "end_rate", "duration_s")
    START_RATE_FIELD_NUMBER: _ClassVar[int]
    END_RATE_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    start_rate: float
    end_rate: float
    duration_s: float
    def __init__(self, start_rate: _Optional[float] = ..., end_rate: _Optional[float] = ..., duration_s: _Optional[float] = ...) -> None: ...

class LoadTestSnapshot(_message.Message):
    __slots__ = ("worker", "seq", "at_s", "histograms", "sent", "completed", "ok", "good", "tokens", "errors", "finishes", "warmup_sent", "warmup_done", "in_flight", "last_send_s", "last_completion_s", "final", "unfinished", "window_end_s", "stopped")
    class HistogramsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ErrorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class FinishesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    WORKER_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_S_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAMS_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    GOOD_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    FINISHES_FIELD_NUMBER: _ClassVar[int]
    WARMUP_SENT_FIELD_NUMBER: _ClassVar[int]
    WARMUP_DONE_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEND_S_FIELD_NUMBER: _ClassVar[int]
    LAST_COMPLETION_S_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_S_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    worker: int
    seq: int
    at_s: float
    histograms: _containers.ScalarMap[str, str]
    sent: int
    completed: int
    ok: int
    good: int
    tokens: int
    errors: _containers.ScalarMap[str, int]
    finishes: _containers.ScalarMap[str, int]
    warmup_sent: int
    warmup_done: int
    in_flight: int
    last_send_s: float
    last_completion_s: float
    final: bool
    unfinished: int
    window_end_s: float
    stopped: bool
    def __init__(self, worker: _Optional[int] = ..., seq: _Optional[int] = ..., at_s: _Optional[float] = ..., histograms: _Optional[_Mapping[str, str]] = ..., sent: _Optional[int] = ..., completed: _Optional[int] = ..., ok: _Optional[int] = ..., good: _Optional[int] = ..., tokens: _Optional[int] = ..., errors: _Optional[_Mapping[str, int]] = ..., finishes: _Optional[_Mapping[str, int]] = ..., warmup_sent: _Optional[int] = ..., warmup_done: _Optional[int] = ..., in_flight: _Optional[int] = ..., last_send_s: _Optional[float] = ..., last_completion_s: _Optional[float] = ..., final: _Optional[bool] = ..., unfinished: _Optional[int] = ..., window_end_s: _Optional[float] = ..., stopped: _Optional[bool] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("id", "kind", "state", "node", "created", "ended", "error", "eval", "quantize", "serve", "loadtest", "results", "endpoint", "report_json", "progress", "http_endpoint")
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
    LOADTEST_FIELD_NUMBER: _ClassVar[int]
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
    loadtest: LoadTestTaskSpec
    results: _containers.ScalarMap[str, float]
    endpoint: str
    report_json: str
    progress: TaskProgress
    http_endpoint: str
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., state: _Optional[_Union[TaskState, str]] = ..., node: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[str] = ..., eval: _Optional[_Union[EvalTaskSpec, _Mapping]] = ..., quantize: _Optional[_Union[QuantizeTaskSpec, _Mapping]] = ..., serve: _Optional[_Union[ServeTaskSpec, _Mapping]] = ..., loadtest: _Optional[_Union[LoadTestTaskSpec, _Mapping]] = ..., results: _Optional[_Mapping[str, float]] = ..., endpoint: _Optional[str] = ..., report_json: _Optional[str] = ..., progress: _Optional[_Union[TaskProgress, _Mapping]] = ..., http_endpoint: _Optional[str] = ...) -> None: ...

class TaskProgress(_message.Message):
    __slots__ = ("task_id", "state", "fraction", "message", "time", "figures", "load")
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
    LOAD_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    state: TaskState
    fraction: float
    message: str
    time: _timestamp_pb2.Timestamp
    figures: _containers.ScalarMap[str, float]
    load: LoadTestSnapshot
    def __init__(self, task_id: _Optional[str] = ..., state: _Optional[_Union[TaskState, str]] = ..., fraction: _Optional[float] = ..., message: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., figures: _Optional[_Mapping[str, float]] = ..., load: _Optional[_Union[LoadTestSnapshot, _Mapping]] = ...) -> None: ...
