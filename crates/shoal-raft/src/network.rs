//! The network (to be written).
