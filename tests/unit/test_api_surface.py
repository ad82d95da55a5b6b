"""``from reasonrec import ...``: every public name is the verb or config it says, even once every submodule of the
library has been imported (a submodule of the same name would shadow a lazily exported verb)."""
import importlib
import inspect
import pkgutil

import reasonrec


def test_every_export_resolves_to_a_verb_or_a_config_whatever_was_imported():
    for module in pkgutil.walk_packages(reasonrec.__path__, "reasonrec."):
        if "vllm_backend" not in module.name:  # needs vllm itself; importing it is tests/vllm's job
            importlib.import_module(module.name)
    for name in reasonrec.__all__:
        value = getattr(reasonrec, name)
        assert inspect.isfunction(value) or inspect.isclass(value), (name, value)
        assert value.__doc__, f"{name} has no docstring"
    assert {"prepare", "train_tools", "score", "evaluate", "read_results", "Recommender"} <= set(reasonrec.__all__)
