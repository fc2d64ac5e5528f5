"""Search controllers behind one ask/tell contract, looked up by name (one module per strategy)."""

from autocomp.search.base import CONTROLLERS, Controller, get_controller, register

__all__ = ["CONTROLLERS", "Controller", "get_controller", "register"]
