"""A one-module Django project on SharedStateCache, for the tests that run it under gunicorn.

Its cache is the shared state (the server at ``SHAREDSTATE_ADDRESS``) and so are its
sessions (``django.contrib.sessions.backends.cache``)::

    gunicorn -c examples/gunicorn/gunicorn.conf.py tests.support.django_app:application

``/count`` counts with ``cache.add`` + ``cache.incr``; ``/login?user=NAME`` stores the
user in the session, ``/whoami`` reads it back; each answers with the worker's pid too.
"""

from __future__ import annotations

import os
import time

from django.conf import settings
from django.core.cache import cache
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse
from django.urls import path

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="tests-only-" + "x" * 50,
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["django.contrib.sessions"],
        MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"],
        CACHES={"default": {"BACKEND": "sharedstate.django.SharedStateCache", "LOCATION": ""}},
        SESSION_ENGINE="django.contrib.sessions.backends.cache",
    )


def count(request: HttpRequest) -> HttpResponse:
    cache.add("hits", 0, timeout=None)  # only the first request creates it
    return HttpResponse(str(cache.incr("hits")))


def login(request: HttpRequest) -> HttpResponse:
    request.session["user"] = request.GET.get("user", "alice")
    return HttpResponse(str(os.getpid()))


def whoami(request: HttpRequest) -> HttpResponse:
    # A short pause spreads concurrent requests over the workers.
    time.sleep(float(request.GET.get("pause", 0)))
    return HttpResponse(f"{os.getpid()} {request.session.get('user', '-')}")


def pid(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(os.getpid()))


urlpatterns = [
    path("count", count),
    path("login", login),
    path("whoami", whoami),
    path("pid", pid),
]

application = get_wsgi_application()
