"""A whole Django project in one module: a shared counter and sessions, on sharedstate.

Run it with gunicorn and the config beside it (see README.md in this folder). The cache
is the shared state, so every worker sees the same counter, and sessions stored in the
cache follow a user to whichever worker answers.
"""

from __future__ import annotations

import os

from django.conf import settings
from django.core.cache import cache
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse
from django.urls import path

settings.configure(
    DEBUG=False,
    # Use your own: python -c 'import secrets; print(secrets.token_urlsafe(50))'
    SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "example-only-" + "x" * 40),
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["django.contrib.sessions"],
    MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"],
    # The one line sharedstate needs; LOCATION "" takes SHAREDSTATE_ADDRESS, .env or the default.
    CACHES={"default": {"BACKEND": "sharedstate.django.SharedStateCache", "LOCATION": ""}},
    SESSION_ENGINE="django.contrib.sessions.backends.cache",
)


def count(request: HttpRequest) -> HttpResponse:
    """A counter that is right under load: with 4 workers, 100 requests get 1..100."""
    cache.add("hits", 0, timeout=None)  # atomic: only the first request creates it
    return HttpResponse(f"{cache.incr('hits')}\n")


def login(request: HttpRequest) -> HttpResponse:
    """``/login?user=ada`` remembers the user in the session."""
    request.session["user"] = request.GET.get("user", "ada")
    return HttpResponse(f"worker {os.getpid()}: logged in as {request.session['user']}\n")


def whoami(request: HttpRequest) -> HttpResponse:
    """Any worker finds the session that another one stored."""
    return HttpResponse(f"worker {os.getpid()}: {request.session.get('user', 'nobody')}\n")


urlpatterns = [path("count", count), path("login", login), path("whoami", whoami)]

application = get_wsgi_application()
