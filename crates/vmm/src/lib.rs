//! VM drivers (issue 4).
