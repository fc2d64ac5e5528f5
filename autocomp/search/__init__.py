"""Search controllers behind one ask/tell contract, looked up by name (one module per strategy).

The registry (:data:`CONTROLLERS`, filled by ``@register``) is the single list of strategies: the
built-in modules below register themselves when this package is imported; a new strategy is one
module with one ``@register("name")`` class (import it before ``get_controller``).
"""

from autocomp.search.base import CONTROLLERS, Controller, check_controller, controller_options, get_controller, list_controllers, register
from autocomp.search import apq, budget, evolution, nsga2, random  # noqa: F401  (built-in strategies register themselves)

__all__ = ["CONTROLLERS", "Controller", "check_controller", "controller_options", "get_controller", "list_controllers", "register"]

from autocomp._callable import make_callable as _make_callable

_make_callable(__name__)  # autocomp.search(...) is autocomp.api.search(...)
