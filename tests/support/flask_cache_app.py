"""The Flask-Caching + Flask-Session example app, as the gunicorn tests serve it."""

from __future__ import annotations

import importlib
import os
import sys

from flask import Flask

from .processes import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "examples", "flask-cache-session"))
app: Flask = importlib.import_module("app").app
