"""The ``bitlower`` application: the command line (``cli``), ``bitlower train`` and its task registry
(``cli_train``, ``train_tasks``) and the demo (``demo``, ``demo_report``, ``demo_timing``).

This layer imports the library (``bitlower``, ``bitlower.runtime``, ``bitlower.models``); nothing
in the library imports it (``tests/packaging/test_layers.py`` checks).
"""
