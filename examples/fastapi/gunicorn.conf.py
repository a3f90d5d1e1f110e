# gunicorn settings for the FastAPI example, with uvicorn's worker. Run from this folder:
#   gunicorn
wsgi_app = "app:app"
worker_class = "uvicorn_worker.UvicornWorker"
bind = "127.0.0.1:8000"
workers = 4

# sharedstate: the master starts (or attaches to) the shared-state server and frees the
# lock of a worker that dies; each worker's lifespan connects to it.
from sharedstate.gunicorn import child_exit, on_exit, on_starting, post_fork  # noqa: E402, F401
