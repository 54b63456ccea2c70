//! Pod interfaces: the veth pair, its addresses, routes and neighbour entries.
