import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeInfo(_message.Message):
    __slots__ = ("node_name", "hostname", "agent_version", "agent_started", "driver_version", "cuda_driver_version", "nvml_error", "gpu_count", "cpu_count", "mem_total_bytes", "sample_interval_s", "history_s", "gpus", "accelerator", "kernel_log_source", "kernel_log_error")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_STARTED_FIELD_NUMBER: _ClassVar[int]
    DRIVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CUDA_DRIVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    NVML_ERROR_FIELD_NUMBER: _ClassVar[int]
    GPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEM_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    HISTORY_S_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    KERNEL_LOG_SOURCE_FIELD_NUMBER: _ClassVar[int]
    KERNEL_LOG_ERROR_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    hostname: str
    agent_version: str
    agent_started: _timestamp_pb2.Timestamp
    driver_version: str
    cuda_driver_version: str
    nvml_error: str
    gpu_count: int
    cpu_count: int
    mem_total_bytes: int
    sample_interval_s: float
    history_s: float
    gpus: _containers.RepeatedCompositeFieldContainer[GpuIdentity]
    accelerator: str
    kernel_log_source: str
    kernel_log_error: str
    def __init__(self, node_name: _Optional[str] = ..., hostname: _Optional[str] = ..., agent_version: _Optional[str] = ..., agent_started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., driver_version: _Optional[str] = ..., cuda_driver_version: _Optional[str] = ..., nvml_error: _Optional[str] = ..., gpu_count: _Optional[int] = ..., cpu_count: _Optional[int] = ..., mem_total_bytes: _Optional[int] = ..., sample_interval_s: _Optional[float] = ..., history_s: _Optional[float] = ..., gpus: _Optional[_Iterable[_Union[GpuIdentity, _Mapping]]] = ..., accelerator: _Optional[str] = ..., kernel_log_source: _Optional[str] = ..., kernel_log_error: _Optional[str] = ...) -> None: ...

class GpuIdentity(_message.Message):
    __slots__ = ("index", "uuid", "name", "pci_bus_id", "mem_total_bytes")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PCI_BUS_ID_FIELD_NUMBER: _ClassVar[int]
    MEM_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    name: str
    pci_bus_id: str
    mem_total_bytes: int
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., name: _Optional[str] = ..., pci_bus_id: _Optional[str] = ..., mem_total_bytes: _Optional[int] = ...) -> None: ...

class NvLinkSample(_message.Message):
    __slots__ = ("link", "active", "replay_errors", "crc_errors", "recovery_errors")
    LINK_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    REPLAY_ERRORS_FIELD_NUMBER: _ClassVar[int]
    CRC_ERRORS_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_ERRORS_FIELD_NUMBER: _ClassVar[int]
    link: int
    active: bool
    replay_errors: int
    crc_errors: int
    recovery_errors: int
    def __init__(self, link: _Optional[int] = ..., active: _Optional[bool] = ..., replay_errors: _Optional[int] = ..., crc_errors: _Optional[int] = ..., recovery_errors: _Optional[int] = ...) -> None: ...

class GpuSample(_message.Message):
    __slots__ = ("index", "uuid", "name", "gpu_util_percent", "mem_util_percent", "mem_used_bytes", "mem_total_bytes", "temperature_c", "power_draw_w", "power_limit_w", "sm_clock_mhz", "throttle_reasons", "throttle_reason_names", "ecc_corrected_volatile", "ecc_uncorrected_volatile", "ecc_corrected_aggregate", "ecc_uncorrected_aggregate", "pcie_tx_bytes_per_s", "pcie_rx_bytes_per_s", "pcie_link_gen", "pcie_link_width", "nvlinks", "xid_counts", "error", "job_name", "ranks", "pids")
    class XidCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    GPU_UTIL_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEM_UTIL_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEM_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEM_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    POWER_DRAW_W_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    SM_CLOCK_MHZ_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_REASONS_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_REASON_NAMES_FIELD_NUMBER: _ClassVar[int]
    ECC_CORRECTED_VOLATILE_FIELD_NUMBER: _ClassVar[int]
    ECC_UNCORRECTED_VOLATILE_FIELD_NUMBER: _ClassVar[int]
    ECC_CORRECTED_AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    ECC_UNCORRECTED_AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    PCIE_TX_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    PCIE_RX_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    PCIE_LINK_GEN_FIELD_NUMBER: _ClassVar[int]
    PCIE_LINK_WIDTH_FIELD_NUMBER: _ClassVar[int]
    NVLINKS_FIELD_NUMBER: _ClassVar[int]
    XID_COUNTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    JOB_NAME_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    name: str
    gpu_util_percent: float
    mem_util_percent: float
    mem_used_bytes: int
    mem_total_bytes: int
    temperature_c: float
    power_draw_w: float
    power_limit_w: float
    sm_clock_mhz: int
    throttle_reasons: int
    throttle_reason_names: _containers.RepeatedScalarFieldContainer[str]
    ecc_corrected_volatile: int
    ecc_uncorrected_volatile: int
    ecc_corrected_aggregate: int
    ecc_uncorrected_aggregate: int
    pcie_tx_bytes_per_s: float
    pcie_rx_bytes_per_s: float
    pcie_link_gen: int
    pcie_link_width: int
    nvlinks: _containers.RepeatedCompositeFieldContainer[NvLinkSample]
    xid_counts: _containers.ScalarMap[int, int]
    error: str
    job_name: str
    ranks: _containers.RepeatedScalarFieldContainer[int]
    pids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., name: _Optional[str] = ..., gpu_util_percent: _Optional[float] = ..., mem_util_percent: _Optional[float] = ..., mem_used_bytes: _Optional[int] = ..., mem_total_bytes: _Optional[int] = ..., temperature_c: _Optional[float] = ..., power_draw_w: _Optional[float] = ..., power_limit_w: _Optional[float] = ..., sm_clock_mhz: _Optional[int] = ..., throttle_reasons: _Optional[int] = ..., throttle_reason_names: _Optional[_Iterable[str]] = ..., ecc_corrected_volatile: _Optional[int] = ..., ecc_uncorrected_volatile: _Optional[int] = ..., ecc_corrected_aggregate: _Optional[int] = ..., ecc_uncorrected_aggregate: _Optional[int] = ..., pcie_tx_bytes_per_s: _Optional[float] = ..., pcie_rx_bytes_per_s: _Optional[float] = ..., pcie_link_gen: _Optional[int] = ..., pcie_link_width: _Optional[int] = ..., nvlinks: _Optional[_Iterable[_Union[NvLinkSample, _Mapping]]] = ..., xid_counts: _Optional[_Mapping[int, int]] = ..., error: _Optional[str] = ..., job_name: _Optional[str] = ..., ranks: _Optional[_Iterable[int]] = ..., pids: _Optional[_Iterable[int]] = ...) -> None: ...

class HostSample(_message.Message):
    __slots__ = ("cpu_percent", "cpu_count", "load1", "load5", "load15", "mem_used_bytes", "mem_total_bytes", "net_rx_bytes_per_s", "net_tx_bytes_per_s", "disk_read_bytes_per_s", "disk_write_bytes_per_s")
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    LOAD1_FIELD_NUMBER: _ClassVar[int]
    LOAD5_FIELD_NUMBER: _ClassVar[int]
    LOAD15_FIELD_NUMBER: _ClassVar[int]
    MEM_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEM_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    NET_RX_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    NET_TX_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    DISK_READ_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    DISK_WRITE_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    cpu_percent: float
    cpu_count: int
    load1: float
    load5: float
    load15: float
    mem_used_bytes: int
    mem_total_bytes: int
    net_rx_bytes_per_s: float
    net_tx_bytes_per_s: float
    disk_read_bytes_per_s: float
    disk_write_bytes_per_s: float
    def __init__(self, cpu_percent: _Optional[float] = ..., cpu_count: _Optional[int] = ..., load1: _Optional[float] = ..., load5: _Optional[float] = ..., load15: _Optional[float] = ..., mem_used_bytes: _Optional[int] = ..., mem_total_bytes: _Optional[int] = ..., net_rx_bytes_per_s: _Optional[float] = ..., net_tx_bytes_per_s: _Optional[float] = ..., disk_read_bytes_per_s: _Optional[float] = ..., disk_write_bytes_per_s: _Optional[float] = ...) -> None: ...

class XidEvent(_message.Message):
    __slots__ = ("gpu_index", "gpu_uuid", "xid", "time", "source", "pci_bus_id", "text", "gpu_known", "pid")
    GPU_INDEX_FIELD_NUMBER: _ClassVar[int]
    GPU_UUID_FIELD_NUMBER: _ClassVar[int]
    XID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PCI_BUS_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    GPU_KNOWN_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    gpu_index: int
    gpu_uuid: str
    xid: int
    time: _timestamp_pb2.Timestamp
    source: str
    pci_bus_id: str
    text: str
    gpu_known: bool
    pid: int
    def __init__(self, gpu_index: _Optional[int] = ..., gpu_uuid: _Optional[str] = ..., xid: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[str] = ..., pci_bus_id: _Optional[str] = ..., text: _Optional[str] = ..., gpu_known: _Optional[bool] = ..., pid: _Optional[int] = ...) -> None: ...

class NodeSample(_message.Message):
    __slots__ = ("node_name", "seq", "time", "host", "gpus", "xid_events", "gpu_problems")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    XID_EVENTS_FIELD_NUMBER: _ClassVar[int]
    GPU_PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    seq: int
    time: _timestamp_pb2.Timestamp
    host: HostSample
    gpus: _containers.RepeatedCompositeFieldContainer[GpuSample]
    xid_events: _containers.RepeatedCompositeFieldContainer[XidEvent]
    gpu_problems: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_name: _Optional[str] = ..., seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., host: _Optional[_Union[HostSample, _Mapping]] = ..., gpus: _Optional[_Iterable[_Union[GpuSample, _Mapping]]] = ..., xid_events: _Optional[_Iterable[_Union[XidEvent, _Mapping]]] = ..., gpu_problems: _Optional[_Iterable[str]] = ...) -> None: ...
