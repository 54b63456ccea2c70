//! Routes, the VXLAN device and its neighbour/FDB entries towards other nodes' pods.
