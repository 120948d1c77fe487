//! This host as the cluster sees it: its name (the short hostname, safe
//! for file names) and the address it advertises to other nodes. At the
//! bottom of the module layers: the data plane, the Slurm bootstrap and
//! the session all ask it.

use crate::error::{Error, Result};
use std::net::IpAddr;

/// This node's name: the short hostname, made safe for file names.
pub(crate) fn node_name() -> String {
    let raw = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "node".to_string());
    let short: String = raw
        .split('.')
        .next()
        .unwrap_or("node")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    if short.is_empty() {
        "node".to_string()
    } else {
        short
    }
}

/// This node's address for other nodes: `RUSTRAY_NODE_IP` if set, else the
/// hostname's address unless it is loopback, else the first address of an
/// interface that is up and not loopback.
pub(crate) fn node_ip() -> Result<IpAddr> {
    if let Some(v) = std::env::var("RUSTRAY_NODE_IP")
        .ok()
        .filter(|v| !v.is_empty())
    {
        return v
            .parse()
            .map_err(|_| Error::invalid(format!("RUSTRAY_NODE_IP={v} is not an IP address")));
    }
    let host = node_name();
    if let Ok(addrs) = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), 0)) {
        if let Some(a) = addrs
            .map(|a| a.ip())
            .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        {
            return Ok(a);
        }
    }
    interface_ip().ok_or_else(|| {
        Error::unavailable(format!(
            "node {host} has no non-loopback IPv4 address to advertise (set RUSTRAY_NODE_IP)"
        ))
    })
}

fn interface_ip() -> Option<IpAddr> {
    use nix::net::if_::InterfaceFlags;
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|a| {
            a.flags.contains(InterfaceFlags::IFF_UP)
                && !a.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        })
        .find_map(|a| a.address?.as_sockaddr_in().map(|sin| IpAddr::V4(sin.ip())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_name_is_file_safe() {
        let n = node_name();
        assert!(!n.is_empty() && n.len() <= 24);
        assert!(n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn node_ip_is_never_loopback() {
        if let Ok(ip) = node_ip() {
            assert!(!ip.is_loopback(), "{ip}");
        }
    }
}
