"""Events between devices, tasks and the cloud, beyond the in-memory hot path.

``durable`` keeps the events of durable routes on disk until their destination
takes them.
"""
from .durable import DurableEvent, DurableQueue, DurableQueueFull

__all__ = ["DurableEvent", "DurableQueue", "DurableQueueFull"]
