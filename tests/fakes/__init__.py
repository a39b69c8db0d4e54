"""Test doubles. The only one allowed is the fake NVML library."""

from tests.fakes.fake_nvml import FakeEventData, FakeGpu, FakeNvml

__all__ = ["FakeEventData", "FakeGpu", "FakeNvml"]
