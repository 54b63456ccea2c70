//! Egress masquerade in nftables, in Ferrite's own table.
