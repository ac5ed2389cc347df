//! A minimal blocking RESP2 client for the fixtures' own probes and admin
//! commands (readiness, `CLUSTER NODES`, `SENTINEL ...`, `INFO`), over plain
//! TCP or TLS. Tests talk to the servers with the `redis` crate instead.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

/// Per-request timeout of the probes (connect, and each read or write).
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `+OK` and other simple strings.
    Status(String),
    /// `-ERR ...`: the whole error line, e.g. `LOADING Redis is loading ...`.
    Error(String),
    Int(i64),
    /// A bulk string (`None` for the null bulk string).
    Bulk(Option<String>),
    /// An array (`None` for the null array).
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The text of a status or bulk string reply; an error reply (or any
    /// other kind) becomes an `io::Error` naming it.
    pub(crate) fn into_string(self) -> io::Result<String> {
        match self {
            Reply::Status(s) | Reply::Bulk(Some(s)) => Ok(s),
            Reply::Bulk(None) => Ok(String::new()),
            Reply::Int(i) => Ok(i.to_string()),
            Reply::Error(e) => Err(io::Error::other(format!("redis error: {e}"))),
            Reply::Array(_) => Err(io::Error::other(format!("expected a string reply, got {self:?}"))),
        }
    }

    /// The elements of an array reply (empty for the null array).
    pub(crate) fn into_array(self) -> io::Result<Vec<Reply>> {
        match self {
            Reply::Array(items) => Ok(items.unwrap_or_default()),
            Reply::Error(e) => Err(io::Error::other(format!("redis error: {e}"))),
            other => Err(io::Error::other(format!("expected an array reply, got {other:?}"))),
        }
    }

    /// A flat `[field, value, field, value, ...]` array (what `SENTINEL
    /// MASTER` returns in RESP2) as pairs.
    pub(crate) fn into_pairs(self) -> io::Result<Vec<(String, String)>> {
        let items = self.into_array()?;
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut iter = items.into_iter();
        while let (Some(k), Some(v)) = (iter.next(), iter.next()) {
            pairs.push((k.into_string()?, v.into_string().unwrap_or_default()));
        }
        Ok(pairs)
    }
}

/// How the fixtures reach their servers: plain TCP, or TLS trusting the
/// fixture's CA (and presenting its client certificate when asked).
#[derive(Clone, Default)]
pub(crate) struct Connector {
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Connector {
    /// Plain TCP.
    pub(crate) fn plain() -> Connector {
        Connector { tls: None }
    }

    /// TLS with this client configuration.
    pub(crate) fn tls(config: Arc<rustls::ClientConfig>) -> Connector {
        Connector { tls: Some(config) }
    }

    /// Opens a connection (for TLS the handshake happens on first use).
    pub(crate) fn connect(&self, addr: SocketAddr) -> io::Result<RespConn> {
        let stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
        stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
        stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let stream = match &self.tls {
            None => Stream::Plain(stream),
            Some(config) => {
                let name = ServerName::IpAddress(addr.ip().into());
                let conn = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(|err| io::Error::other(format!("TLS setup: {err}")))?;
                Stream::Tls(Box::new(rustls::StreamOwned::new(conn, stream)))
            }
        };
        Ok(RespConn { reader: BufReader::new(stream) })
    }

    /// Sends one command on a fresh connection and returns its reply (error
    /// replies included, as [`Reply::Error`]).
    pub(crate) fn command(&self, addr: SocketAddr, args: &[&str]) -> io::Result<Reply> {
        self.connect(addr)?.request(args)
    }

    /// Like [`command`](Self::command), for commands that answer a string;
    /// an error reply becomes `Err`.
    pub(crate) fn command_str(&self, addr: SocketAddr, args: &[&str]) -> io::Result<String> {
        self.command(addr, args)?.into_string()
    }

    /// Polls PING on `addr` until `PONG` or `timeout`; the error is the last
    /// failure.
    pub(crate) fn wait_for_pong(&self, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let err = match self.command(addr, &["PING"]) {
                Ok(Reply::Status(s)) if s == "PONG" => return Ok(()),
                Ok(reply) => format!("PING answered {reply:?}"),
                Err(err) => err.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(err);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// One blocking RESP2 connection.
pub(crate) struct RespConn {
    reader: BufReader<Stream>,
}

impl RespConn {
    /// Sends one command and reads its reply.
    pub(crate) fn request(&mut self, args: &[&str]) -> io::Result<Reply> {
        let mut buf = format!("*{}\r\n", args.len());
        for arg in args {
            buf.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        let stream = self.reader.get_mut();
        stream.write_all(buf.as_bytes())?;
        stream.flush()?;
        self.read_reply()
    }

    /// Like [`request`](Self::request); an error reply becomes `Err`.
    pub(crate) fn request_str(&mut self, args: &[&str]) -> io::Result<String> {
        self.request(args)?.into_string()
    }

    fn read_reply(&mut self) -> io::Result<Reply> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let (kind, rest) = line.split_at(line.len().min(1));
        let len = || -> io::Result<i64> {
            rest.parse().map_err(|_| io::Error::other(format!("bad length in reply line {line:?}")))
        };
        match kind {
            "+" => Ok(Reply::Status(rest.to_string())),
            "-" => Ok(Reply::Error(rest.to_string())),
            ":" => Ok(Reply::Int(len()?)),
            "$" => {
                let Ok(len) = usize::try_from(len()?) else {
                    return Ok(Reply::Bulk(None));
                };
                let mut body = vec![0; len + 2];
                self.reader.read_exact(&mut body)?;
                body.truncate(len);
                Ok(Reply::Bulk(Some(String::from_utf8_lossy(&body).into_owned())))
            }
            "*" => {
                let Ok(len) = usize::try_from(len()?) else {
                    return Ok(Reply::Array(None));
                };
                let items = (0..len).map(|_| self.read_reply()).collect::<io::Result<Vec<_>>>()?;
                Ok(Reply::Array(Some(items)))
            }
            _ => Err(io::Error::other(format!("unexpected reply line {line:?}"))),
        }
    }
}

/// Value of `field` in an `INFO`-style `field:value` listing.
pub(crate) fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == field).then(|| value.trim())
    })
}
