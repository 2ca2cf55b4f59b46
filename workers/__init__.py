"""Job handlers, one module per queue, paired with their job kinds in ``workers/registry.py``.
They run domain work (``innera.exports``, ``innera.imports``, …) and never import the HTTP
layer."""
