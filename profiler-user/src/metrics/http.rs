//! The /metrics endpoint: a minimal HTTP/1.1 server on tokio, one request per
//! connection, with size and time limits.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::timeout,
};

use super::Metrics;
use crate::connections::{MAX_CONNECTIONS, Slot, Slots, after_failed_accept};

/// Largest request head accepted.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// GET /metrics
    Metrics,
    /// GET /
    Index,
    /// Another path.
    NotFound,
    /// Another method.
    MethodNotAllowed,
    /// Not an HTTP request line.
    BadRequest,
}

/// Routes a request by its head (request line and headers).
pub fn route(head: &str) -> Route {
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    if method != "GET" && method != "HEAD" {
        return Route::MethodNotAllowed;
    }
    match target.split('?').next().unwrap_or("") {
        "/metrics" => Route::Metrics,
        "/" => Route::Index,
        _ => Route::NotFound,
    }
}

/// Serves requests until the task is dropped, at most [`MAX_CONNECTIONS`]
/// connections at once.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Slots::new(MAX_CONNECTIONS);
    let mut failing = 0;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                after_failed_accept("metrics", &err, &mut failing).await;
                continue;
            }
        };
        failing = 0;
        // Every connection busy answering: this one is closed.
        let Some(slot) = slots.take() else {
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            tokio::select! {
                () = slot.closed() => tracing::debug!("metrics connection closed to make room"),
                result = answer(stream, &metrics, &slot) => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "metrics request failed");
                    }
                }
            }
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics, slot: &Slot) -> std::io::Result<()> {
    let head = timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await;
    slot.answering();
    let head = match head {
        Ok(head) => head?,
        Err(_) => {
            return respond(
                &mut stream,
                "408 Request Timeout",
                "text/plain",
                "request timeout\n",
            )
            .await;
        }
    };
    match head.as_deref().map(route) {
        Some(Route::Metrics) => match metrics.render() {
            Ok(body) => {
                respond(
                    &mut stream,
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    &body,
                )
                .await
            }
            Err(err) => {
                respond(
                    &mut stream,
                    "500 Internal Server Error",
                    "text/plain",
                    &format!("{err}\n"),
                )
                .await
            }
        },
        Some(Route::Index) => {
            let body = "heapwatch: metrics at /metrics\n";
            respond(&mut stream, "200 OK", "text/plain", body).await
        }
        Some(Route::NotFound) => {
            respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                "not found: try /metrics\n",
            )
            .await
        }
        Some(Route::MethodNotAllowed) => {
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                "only GET\n",
            )
            .await
        }
        Some(Route::BadRequest) | None => {
            respond(
                &mut stream,
                "400 Bad Request",
                "text/plain",
                "bad request\n",
            )
            .await
        }
    }
}

/// The request head, or `None` when it is too large or the client hung up.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Ok(None);
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_requests() {
        assert_eq!(
            route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route("GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route("GET / HTTP/1.1\r\n\r\n"), Route::Index);
        assert_eq!(route("GET /other HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route("POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route("hello\r\n\r\n"), Route::BadRequest);
        assert_eq!(route("GET /metrics SPDY/3\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(""), Route::BadRequest);
    }
}
