//! A lean HTTP/1.1 client for the generator: keep-alive connections reused from a pool, request
//! targets and headers prepared once, so the generator takes little of the CPU it shares with the
//! server under test.

use std::sync::Mutex;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

/// Connections to one server, opened on demand and reused.
pub struct HttpPool {
    address: String,
    host: HeaderValue,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl HttpPool {
    /// A pool for `base_url` (`http://host:port`; TLS is not supported).
    pub fn new(base_url: &str) -> anyhow::Result<Self> {
        let address = base_url
            .strip_prefix("http://")
            .context("the generator speaks plain http:// only")?
            .trim_end_matches('/')
            .to_owned();
        Ok(Self {
            host: HeaderValue::from_str(&address).context("invalid host")?,
            address,
            idle: Mutex::new(Vec::new()),
        })
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = tokio::net::TcpStream::connect(&self.address).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// POSTs `body` to `path` with `headers`; returns the status and the whole answer body.
    pub async fn post(
        &self,
        path: &'static str,
        content_type: &'static str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> anyhow::Result<(u16, Bytes)> {
        let idle = self.idle.lock().expect("pool lock").pop();
        let mut sender = match idle {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.connect().await?,
        };
        sender.ready().await?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, content_type)
            .body(Full::new(body))?;
        request.headers_mut().extend(headers.iter().cloned());
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        self.idle.lock().expect("pool lock").push(sender);
        Ok((status, body))
    }
}
