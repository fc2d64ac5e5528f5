"""Latency measurement: backends behind one interface, devices looked up by name.

A device names a backend and its settings (``DEVICES``); ``get_device(name)`` returns it and
``device.measure(onnx_path, precision)`` returns a :class:`Measurement` that carries its protocol.
"""

from autocomp.measure.base import DEVICES, Device, Measurement, get_device, register_device

__all__ = ["DEVICES", "Device", "Measurement", "get_device", "register_device"]

from autocomp._callable import make_callable as _make_callable

_make_callable(__name__)  # autocomp.measure(...) is autocomp.api.measure(...)
