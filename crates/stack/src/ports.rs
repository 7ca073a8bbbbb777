//! Port selection. Free ports come from the kernel (bind to port 0); configured ports are checked
//! up front so that a taken port fails the start before anything is launched.

use std::net::TcpListener;

use anyhow::{Result, bail};

/// A port the kernel says is free right now. (Between this call and the component's bind there is
/// a small window in which another process could take it; the component's health check catches
/// that case with a clear error.)
pub fn free_port(host: &str) -> Result<u16> {
    let l = TcpListener::bind((host, 0))?;
    Ok(l.local_addr()?.port())
}

/// Fails with one clear line when `port` is already taken on `host`.
pub fn ensure_free(host: &str, port: u16, what: &str) -> Result<()> {
    match TcpListener::bind((host, port)) {
        Ok(_) => Ok(()),
        Err(e) => bail!(
            "port {port} for {what} is taken on {host} ({e}): stop whatever uses it, or choose \
             another port (see `saldo up --help`)"
        ),
    }
}

/// True if something accepts connections on host:port.
pub fn is_listening(host: &str, port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &format!("{host}:{port}")
            .parse()
            .expect("host is an IP address"),
        std::time::Duration::from_millis(300),
    )
    .is_ok()
}
