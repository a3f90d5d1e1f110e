"""What the tests share: helpers they import, and programs they start as processes.

Fixtures live in ``tests/conftest.py``; everything else more than one test file needs
lives here, once.
"""
