"""Helpers shared by every test; new tests use these instead of writing their own.

- ``waiting``: ``assert_eventually``, the only way tests wait for a condition.
- ``graphs``: ``gnode`` and helpers that pick states out of a run.
- ``runtimes``: ``RuntimeGroup`` and ``running``, runtimes as tasks of the test's loop; a crash fails the test.
- ``servers``: ``serving`` (an ``App`` in the test's loop), ``ServerProcess`` (the binary), ``stop_process``.
- ``pg``: the ``pg_dsn`` fixture (a PostgreSQL database made for the test, dropped after it) and the skip rule.
- ``cluster``: the fault tests' processes: a scheduler binary and ``fault_runtime.py`` children, and their log.

The fixtures built on them live in ``tests/conftest.py`` and ``tests/faults/conftest.py``.
"""
