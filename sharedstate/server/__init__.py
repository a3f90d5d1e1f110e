"""The server: the store and its operations, the lock queue, the event loop, the process."""
