//! The HTTP CONNECT proxy that makes vault hosts reachable. A vault is its own host
//! (`https://{name}.vault.azure.net`), which no DNS here resolves; Microsoft's SDKs, the Azure CLI and reqwest
//! all honour `HTTPS_PROXY`, so a client keeps the real vault URL and challenge resource and needs only the
//! CA and the proxy. `CONNECT {vault host}:443` for a vault the emulator holds is answered `200 Connection
//! established`, and the tunnel is served by the emulator's own TLS server (the same rustls configuration
//! and router as the main listener); anything else gets 403 or 400 and is closed: the proxy never connects
//! anywhere (RFC 9110 section 9.3.6 for CONNECT; there is no internet here).
//!
//! The request head is parsed by hand: it is one request line and headers to skip, and a proxy crate would
//! bring a client side the emulator must never have.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

use crate::server::Ctx;

/// Largest CONNECT request head accepted.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long a client may take to send its CONNECT head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until the task is aborted; aborting it drops (and so aborts) every open tunnel.
pub async fn serve(listener: TcpListener, ctx: Ctx, tls: Arc<rustls::ServerConfig>, app: Router) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut tunnels = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                tunnels.spawn(tunnel(stream, peer, ctx.clone(), acceptor.clone(), app.clone()));
            }
            Some(_) = tunnels.join_next(), if !tunnels.is_empty() => {}
        }
    }
}

async fn tunnel(
    mut stream: TcpStream,
    peer: SocketAddr,
    ctx: Ctx,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
) {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(head)) => head,
        Ok(Err(reason)) => return refuse(&mut stream, "400 Bad Request", reason).await,
        Err(_) => {
            return refuse(
                &mut stream,
                "408 Request Timeout",
                "no CONNECT request in time",
            )
            .await;
        }
    };
    let target = match connect_target(&head) {
        Ok(t) => t,
        Err((status, reason)) => return refuse(&mut stream, status, &reason).await,
    };
    let Some(vault) = super::parse_host(&target) else {
        let reason = format!(
            "{target} is not a Key Vault host; this proxy reaches only the emulator's vaults"
        );
        return refuse(&mut stream, "403 Forbidden", &reason).await;
    };
    if super::vault_id(&ctx.world.lock(), &vault.name).is_none() {
        let reason = format!("no vault named {} exists in this emulator", vault.name);
        return refuse(&mut stream, "502 Bad Gateway", &reason).await;
    }
    if stream
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let tls = match acceptor.accept(stream).await {
        Ok(tls) => tls,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "TLS handshake in a CONNECT tunnel failed");
            return;
        }
    };
    let service = TowerToHyperService::new(app);
    if let Err(e) = Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await
    {
        tracing::debug!(%peer, error = %e, "a CONNECT tunnel ended with an error");
    }
}

/// Reads the request head up to the blank line, byte by byte so that nothing after it (the TLS
/// ClientHello, if the client does not wait) is consumed.
async fn read_head(stream: &mut TcpStream) -> Result<String, &'static str> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        if head.len() >= MAX_HEAD_BYTES {
            return Err("request head too large");
        }
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return Err("connection closed before the request head ended"),
        }
    }
    String::from_utf8(head).map_err(|_| "request head is not text")
}

/// The `host:port` of a `CONNECT host:port HTTP/1.x` request line, or the status and reason to refuse with.
pub fn connect_target(head: &str) -> Result<String, (&'static str, String)> {
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split_ascii_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(("400 Bad Request", "malformed request line".into()));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(("400 Bad Request", "malformed request line".into()));
    }
    if !method.eq_ignore_ascii_case("CONNECT") {
        return Err((
            "405 Method Not Allowed",
            "this proxy only tunnels (CONNECT) to Key Vault hosts".into(),
        ));
    }
    match target.rsplit_once(':') {
        Some((_, "443")) => Ok(target.to_string()),
        _ => Err((
            "403 Forbidden",
            format!("{target}: only port 443 of Key Vault hosts is reachable"),
        )),
    }
}

async fn refuse(stream: &mut TcpStream, status: &str, reason: &str) {
    let body = format!("{reason}\n");
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_are_parsed() {
        assert_eq!(
            connect_target("CONNECT contoso-kv.vault.azure.net:443 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok("contoso-kv.vault.azure.net:443".to_string())
        );
        assert_eq!(
            connect_target("GET http://example.com/ HTTP/1.1\r\n\r\n")
                .unwrap_err()
                .0,
            "405 Method Not Allowed"
        );
        assert_eq!(
            connect_target("CONNECT kv.vault.azure.net:80 HTTP/1.1\r\n\r\n")
                .unwrap_err()
                .0,
            "403 Forbidden"
        );
        assert_eq!(
            connect_target("CONNECT\r\n\r\n").unwrap_err().0,
            "400 Bad Request"
        );
    }
}
