//! Address types as they appear on the wire: strings the apiserver has already
//! validated with Kubernetes' CEL IP/CIDR library, parsed into [`ipnet`] types on demand.
//!
//! NB: they stay strings in the API types on purpose. If an object ever holds a value the
//! current schema would refuse (written under an older schema, say), a typed field would make
//! the whole object undecodable and the controller blind to it; a string lets the controller
//! report exactly which field is wrong.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The longest textual CIDR: a full IPv6 address plus `/128`.
pub const MAX_CIDR_LEN: u32 = 43;
/// The longest textual IP address: a full IPv6 address.
pub const MAX_IP_LEN: u32 = 39;

/// A CIDR in network form (no host bits set), IPv4 or IPv6, e.g. `10.244.0.0/16`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cidr(pub String);

/// A value that is not the address or CIDR its field requires.
#[derive(Debug, thiserror::Error)]
#[error("{value:?} is not a valid {expected}: {source}")]
pub struct ParseError {
    /// The text that failed to parse.
    pub value: String,
    /// What the field requires ("CIDR", "IP address").
    pub expected: &'static str,
    /// Why the parser refused it.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl Cidr {
    /// Parses the CIDR; refuses host bits, as the apiserver does.
    pub fn net(&self) -> Result<IpNet, ParseError> {
        let net: IpNet = self
            .0
            .parse()
            .map_err(|e: ipnet::AddrParseError| ParseError {
                value: self.0.clone(),
                expected: "CIDR",
                source: Box::new(e),
            })?;
        if net.trunc() != net {
            return Err(ParseError {
                value: self.0.clone(),
                expected: "CIDR",
                source: format!("host bits are set; the network is {}", net.trunc()).into(),
            });
        }
        Ok(net)
    }
}

impl From<IpNet> for Cidr {
    fn from(net: IpNet) -> Self {
        Self(net.to_string())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for Cidr {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Cidr".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": MAX_CIDR_LEN,
            "x-kubernetes-validations": [
                {
                    "rule": "isCIDR(self)",
                    "message": "must be a CIDR such as 10.244.0.0/16 or fd00:10:244::/56",
                },
                // NB: a messageExpression naming the masked network is over the apiserver's CEL
                // cost budget (string(cidr) is estimated as unbounded), so the message is fixed.
                {
                    "rule": "!isCIDR(self) || cidr(self) == cidr(self).masked()",
                    "message": "has host bits set: write the network address (10.244.0.0/16, not 10.244.1.0/16)",
                },
            ],
        })
    }
}

/// An IPv4 or IPv6 address, e.g. `172.30.0.11`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IpAddress(pub String);

impl IpAddress {
    /// Parses the address.
    pub fn ip(&self) -> Result<IpAddr, ParseError> {
        self.0
            .parse()
            .map_err(|e: std::net::AddrParseError| ParseError {
                value: self.0.clone(),
                expected: "IP address",
                source: Box::new(e),
            })
    }
}

impl From<IpAddr> for IpAddress {
    fn from(ip: IpAddr) -> Self {
        Self(ip.to_string())
    }
}

impl fmt::Display for IpAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for IpAddress {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "IpAddress".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": MAX_IP_LEN,
            "x-kubernetes-validations": [
                {
                    "rule": "isIP(self)",
                    "message": "must be an IP address such as 172.30.0.11 or fd00::11",
                },
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_in_network_form_parses() {
        let net = Cidr("10.244.0.0/16".into()).net().unwrap();
        assert_eq!(net.to_string(), "10.244.0.0/16");
    }

    #[test]
    fn cidr_with_host_bits_is_refused_naming_the_network() {
        let err = Cidr("10.244.1.0/16".into()).net().unwrap_err();
        assert!(err.to_string().contains("10.244.0.0/16"), "{err}");
    }

    #[test]
    fn garbage_is_neither_cidr_nor_ip() {
        assert!(Cidr("10.0.0.0".into()).net().is_err());
        assert!(IpAddress("10.0.0.300".into()).ip().is_err());
        assert!(IpAddress("fd00::11".into()).ip().is_ok());
    }
}
