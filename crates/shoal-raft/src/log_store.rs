//! The log store (to be written).
