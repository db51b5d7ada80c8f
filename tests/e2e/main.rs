//! End-to-end tests: they start the real binaries and call them over real sockets.
