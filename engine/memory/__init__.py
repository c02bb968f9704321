"""Memory manager: one ledger of every module that holds weights, with readouts and a budget."""

from engine.memory.devices import device_stats, reset_peak
from engine.memory.host_pool import host_pinned_bytes
from engine.memory.manager import DISK, ROLES, MemoryManager, ModuleEntry, bytes_by_device, module_bytes, real_device
from engine.memory.planner import ComponentSize, Plan, plan_swap

__all__ = [
    "DISK", "ROLES", "MemoryManager", "ModuleEntry", "bytes_by_device", "device_stats", "module_bytes",
    "real_device", "reset_peak", "host_pinned_bytes", "ComponentSize", "Plan", "plan_swap",
]
