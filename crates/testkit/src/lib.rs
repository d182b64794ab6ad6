//! Test support: real servers over loopback with generated certificates. Never a dependency
//! of the shipped binary.
