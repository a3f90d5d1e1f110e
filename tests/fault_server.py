"""``python -m tests.fault_server ARGS``: the sharedstate CLI with injected disk faults."""

from sharedstate.cli import main
from tests.faults import install_from_env

if __name__ == "__main__":
    install_from_env()
    main()
