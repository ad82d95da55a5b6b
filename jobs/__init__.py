"""Entry points: one module per job (``add_arguments``, ``config``, ``run``, ``main``), wiring the actors of
``actors/`` and the library; ``jobs.cli`` is the ``reasonrec`` command over them."""
