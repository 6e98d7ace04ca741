//! A minimal HTTP/1.1 client for the load generator: one keep-alive
//! connection per origin per worker, requests sent one at a time.
//!
//! `shoal bench` drives three different systems (Shoal, etcd's JSON gateway,
//! dqlite-demo) and must spend the same, small amount of CPU per request on
//! each, since the load generator shares the machine with the servers. This
//! client does only what those three servers need: `Content-Length` or
//! chunked bodies, `Location` for redirects, and reconnecting when a server
//! closed an idle connection.

use std::collections::HashMap;
use std::io;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// One answer.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Location` header, if any.
    pub location: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

/// An origin (`http://host:port`) split into what a request needs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// `host:port`, to connect to and to send as `Host`.
    pub authority: String,
}

impl Origin {
    /// Parses `http://host:port[/...]`; only plain HTTP is supported.
    pub fn parse(url: &str) -> anyhow::Result<Origin> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("{url}: only http:// endpoints are supported"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            anyhow::bail!("{url}: no host");
        }
        Ok(Origin { authority: authority.to_string() })
    }

    /// Back to `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.authority)
    }
}

/// Keep-alive connections, one per origin.
#[derive(Default)]
pub struct Connections {
    open: HashMap<Origin, BufReader<TcpStream>>,
    /// Extra headers sent with every request (e.g. the bearer token).
    headers: String,
}

impl Connections {
    /// Connections that send `headers` (name, value) with every request.
    pub fn new(headers: &[(&str, &str)]) -> Connections {
        let headers = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        Connections { open: HashMap::new(), headers }
    }

    /// Sends one request and reads its answer. A connection that turns out
    /// to be closed before any answer byte arrived is reopened once.
    pub async fn request(
        &mut self,
        origin: &Origin,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> io::Result<Response> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n{}",
            origin.authority,
            body.len(),
            self.headers
        );
        if let Some(ct) = content_type {
            head.push_str("Content-Type: ");
            head.push_str(ct);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut msg = head.into_bytes();
        msg.extend_from_slice(body);
        let reused = self.open.contains_key(origin);
        match self.exchange(origin, &msg).await {
            Err(Failure::BeforeAnswer(_)) if reused => {
                self.open.remove(origin);
                self.exchange(origin, &msg).await.map_err(Failure::into_io)
            }
            other => other.map_err(Failure::into_io),
        }
    }

    async fn exchange(&mut self, origin: &Origin, msg: &[u8]) -> Result<Response, Failure> {
        if !self.open.contains_key(origin) {
            let stream =
                TcpStream::connect(&origin.authority).await.map_err(Failure::BeforeAnswer)?;
            stream.set_nodelay(true).map_err(Failure::BeforeAnswer)?;
            self.open.insert(origin.clone(), BufReader::new(stream));
        }
        let conn = self.open.get_mut(origin).expect("inserted above");
        let result = exchange(conn, msg).await;
        match &result {
            Ok((_, keep)) if *keep => {}
            _ => {
                self.open.remove(origin);
            }
        }
        result.map(|(r, _)| r)
    }
}

/// Why an exchange failed: before the first answer byte (the request may be
/// resent on a fresh connection) or after.
enum Failure {
    BeforeAnswer(io::Error),
    During(io::Error),
}

impl Failure {
    fn into_io(self) -> io::Error {
        match self {
            Failure::BeforeAnswer(e) | Failure::During(e) => e,
        }
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Writes `msg`, reads one response; also says whether the connection may be reused.
async fn exchange(
    conn: &mut BufReader<TcpStream>,
    msg: &[u8],
) -> Result<(Response, bool), Failure> {
    conn.get_mut().write_all(msg).await.map_err(Failure::BeforeAnswer)?;
    let mut line = String::new();
    let n = conn.read_line(&mut line).await.map_err(Failure::BeforeAnswer)?;
    if n == 0 {
        return Err(Failure::BeforeAnswer(io::ErrorKind::UnexpectedEof.into()));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| Failure::During(bad("malformed status line")))?;
    let (mut length, mut chunked, mut keep, mut location) = (None, false, true, None);
    loop {
        line.clear();
        if conn.read_line(&mut line).await.map_err(Failure::During)? == 0 {
            return Err(Failure::During(io::ErrorKind::UnexpectedEof.into()));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| Failure::During(bad("length")))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            keep = !value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("location") {
            location = Some(value.to_string());
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            conn.read_line(&mut line).await.map_err(Failure::During)?;
            let size = line.trim().split(';').next().unwrap_or_default();
            let size =
                usize::from_str_radix(size, 16).map_err(|_| Failure::During(bad("chunk")))?;
            let start = body.len();
            body.resize(start + size, 0);
            conn.read_exact(&mut body[start..]).await.map_err(Failure::During)?;
            line.clear();
            conn.read_line(&mut line).await.map_err(Failure::During)?;
            if size == 0 {
                break;
            }
        }
    } else if let Some(len) = length {
        body.resize(len, 0);
        conn.read_exact(&mut body).await.map_err(Failure::During)?;
    } else if status >= 200 && status != 204 && status != 304 {
        conn.read_to_end(&mut body).await.map_err(Failure::During)?;
        keep = false;
    }
    Ok((Response { status, location, body }, keep))
}

/// Standard base64 with padding (etcd's JSON gateway takes keys and values so).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"bench/1/2"), "YmVuY2gvMS8y");
    }

    #[test]
    fn origins_keep_only_the_authority() {
        let o = Origin::parse("http://127.0.0.1:7070/v1/bases").expect("origin");
        assert_eq!(o.authority, "127.0.0.1:7070");
        assert_eq!(o.url(), "http://127.0.0.1:7070");
        assert!(Origin::parse("https://x").is_err());
    }
}
