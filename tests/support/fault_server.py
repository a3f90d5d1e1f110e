"""``python -m tests.support.fault_server ARGS``: the sharedstate CLI with injected faults.

Disk faults (``SHAREDSTATE_TEST_FAULTS``) and replies cut off
(``SHAREDSTATE_TEST_CUT_REPLIES``): see tests/support/faults.py.
"""

from sharedstate.cli import main
from tests.support.faults import install_from_env, install_reply_cuts_from_env

if __name__ == "__main__":
    install_from_env()
    install_reply_cuts_from_env()
    main()
