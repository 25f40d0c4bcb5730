//! A Server-Sent Events reader for teal's `GET /v1/events`, over plain
//! HTTP/1.1 as `curl -N` or a browser's `EventSource` reads it: the
//! response head, then the chunked body cut into events as they arrive.

use std::io;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One event: its name (`message` when the stream gave none) and its data
/// (the `data:` lines joined); a comment line (`: keepalive`) is an event
/// named `:` with the comment as its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub data: String,
}

impl Event {
    /// The data as JSON.
    ///
    /// # Panics
    ///
    /// If it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event {} is not JSON ({e}): {}", self.name, self.data))
    }
}

/// An open event stream.
#[derive(Debug)]
pub struct EventStream {
    stream: TcpStream,
    /// Bytes read and not yet dechunked.
    raw: Vec<u8>,
    /// Body bytes not yet cut into events.
    body: Vec<u8>,
    /// Whether the server ended the body.
    ended: bool,
    /// The `retry:` the stream asked for, in milliseconds.
    pub retry_ms: Option<u64>,
    /// The response's headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The last event of each name read so far: the state a page would
    /// show, which [`EventStream::wait_for`] looks at first.
    last: std::collections::HashMap<String, Event>,
}

/// What `GET /v1/events` answered: a stream, or a status and body.
#[derive(Debug)]
pub enum Opened {
    Stream(EventStream),
    Refused { status: u16, body: String },
}

impl Opened {
    /// The stream.
    ///
    /// # Panics
    ///
    /// If it was refused.
    pub fn stream(self) -> EventStream {
        match self {
            Opened::Stream(s) => s,
            Opened::Refused { status, body } => panic!("event stream refused: {status} {body}"),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl EventStream {
    /// Opens `GET /v1/events` on `127.0.0.1:port`.
    pub async fn open(port: u16) -> io::Result<Opened> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(
                format!(
                    "GET /v1/events HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\
                     accept: text/event-stream\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
        let mut raw = Vec::new();
        let head_end = loop {
            if let Some(end) = find(&raw, b"\r\n\r\n") {
                break end;
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response head"))??;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
            }
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
        let rest = raw[head_end + 4..].to_vec();
        let status: u16 = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = head
            .lines()
            .skip(1)
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            })
            .collect();
        if status != 200 {
            // A refusal is short: read what came with the head and a bit more.
            let mut body = rest;
            let mut buf = [0u8; 4096];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await
            {
                body.extend_from_slice(&buf[..n]);
            }
            return Ok(Opened::Refused {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        let mut events = EventStream {
            stream,
            raw: rest,
            body: Vec::new(),
            ended: false,
            retry_ms: None,
            headers,
            last: std::collections::HashMap::new(),
        };
        // The first events may have come with the head.
        events.dechunk()?;
        Ok(Opened::Stream(events))
    }

    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Moves whole chunks from `raw` to `body`.
    fn dechunk(&mut self) -> io::Result<()> {
        loop {
            let Some(line_end) = find(&self.raw, b"\r\n") else {
                return Ok(());
            };
            let size = std::str::from_utf8(&self.raw[..line_end])
                .ok()
                .and_then(|t| usize::from_str_radix(t.split(';').next()?.trim(), 16).ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                self.ended = true;
                return Ok(());
            }
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                return Ok(());
            }
            self.body.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
        }
    }

    /// The next complete event already read, if any.
    fn parse_one(&mut self) -> Option<Event> {
        loop {
            let end = find(&self.body, b"\n\n")?;
            let block = String::from_utf8_lossy(&self.body[..end]).into_owned();
            self.body.drain(..end + 2);
            let (mut name, mut data, mut comment) = (None, Vec::new(), None);
            for line in block.lines() {
                if let Some(c) = line.strip_prefix(':') {
                    comment = Some(c.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                } else if let Some(v) = line.strip_prefix("retry:") {
                    self.retry_ms = v.trim().parse().ok();
                }
            }
            if name.is_none() && data.is_empty() {
                if let Some(c) = comment {
                    return Some(Event {
                        name: ":".into(),
                        data: c,
                    });
                }
                // A `retry:` alone.
                continue;
            }
            return Some(Event {
                name: name.unwrap_or_else(|| "message".into()),
                data: data.join("\n"),
            });
        }
    }

    /// The next event within `timeout`: `Ok(None)` when the stream ended,
    /// an error when nothing came in time.
    pub async fn next_within(&mut self, timeout: Duration) -> io::Result<Option<Event>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.parse_one() {
                self.last.insert(e.name.clone(), e.clone());
                return Ok(Some(e));
            }
            if self.ended {
                return Ok(None);
            }
            let mut buf = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no event in time"))??;
            if n == 0 {
                self.ended = true;
                continue;
            }
            self.raw.extend_from_slice(&buf[..n]);
            self.dechunk()?;
        }
    }

    /// The next event named `name` within `timeout`, skipping others.
    ///
    /// # Panics
    ///
    /// If none comes in time or the stream ends first.
    pub async fn next_named(&mut self, name: &str, timeout: Duration) -> Event {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Ok(Some(e)) if e.name == name => return e,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the event stream ended before a {name} event"),
                Err(e) => panic!("no {name} event within {timeout:?}: {e}"),
            }
        }
    }

    /// Waits until the latest event named `name` (perhaps one read
    /// earlier, while waiting for another) satisfies `check`, and returns
    /// its JSON: teal sends a state once, so the one wanted may have
    /// arrived before the wait began.
    ///
    /// # Panics
    ///
    /// If none does within `timeout`.
    pub async fn wait_for(
        &mut self,
        name: &str,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = Value::Null;
        if let Some(e) = self.last.get(name) {
            last = e.json();
            if check(&last) {
                return last;
            }
        }
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = match self.next_within(left).await {
                Ok(Some(e)) => e,
                Ok(None) => panic!("the event stream ended before {what}; last {name}: {last}"),
                Err(_) => panic!("not {what} within {timeout:?}; last {name}: {last}"),
            };
            if event.name != name {
                continue;
            }
            last = event.json();
            if check(&last) {
                return last;
            }
        }
    }
}
