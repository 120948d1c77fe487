//! This host as the cluster sees it: its name (the short hostname, safe
//! for file names) and the address it advertises to other nodes. At the
//! bottom of the module layers: the data plane, the Slurm bootstrap and
//! the session all ask it.

use crate::error::{Error, Result};
use std::net::IpAddr;

/// This node's name: the short hostname, made safe for file names.
pub(crate) fn node_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let raw = if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "node".to_string()
    };
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
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        let up = ifa.ifa_flags & libc::IFF_UP as u32 != 0;
        let lo = ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
        if !up || lo || ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to a sockaddr.
        if unsafe { (*ifa.ifa_addr).sa_family } as i32 != libc::AF_INET {
            continue;
        }
        // SAFETY: family AF_INET means the sockaddr is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        found = Some(IpAddr::from(
            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
        ));
        break;
    }
    // SAFETY: freeing the list getifaddrs allocated, once.
    unsafe { libc::freeifaddrs(head) };
    found
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
