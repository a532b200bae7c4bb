"""Links between the coordinator and the outside world that are not HTTP.

``mqtt`` bridges the coordinator to an MQTT broker: device events come in on the
event loop thread, outgoing events wait in a bounded buffer while the broker is
away.
"""
from .mqtt import Backoff, MqttBridge, MqttSettings

__all__ = ["Backoff", "MqttBridge", "MqttSettings"]
