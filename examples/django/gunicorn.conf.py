# gunicorn settings for the Django example. Run from this folder:  gunicorn
wsgi_app = "app:application"
bind = "127.0.0.1:8000"
workers = 4

# sharedstate: start (or attach to) the shared-state server, and look after workers.
from sharedstate.gunicorn import child_exit, on_exit, on_starting, post_fork  # noqa: E402, F401
