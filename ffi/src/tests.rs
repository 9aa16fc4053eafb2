//! Unit tests of the boundary.
