"""Helpers shared by several test modules (not tests themselves; pytest does not collect this package).

Why a package: helper modules sit apart from the ``test_*.py`` files, and every test imports them the
same way, ``from helpers.<module> import ...``, because pyproject's ``[tool.pytest.ini_options]``
puts ``tests/`` on ``sys.path`` (``pythonpath = ["tests"]``) whatever the import mode.
"""
