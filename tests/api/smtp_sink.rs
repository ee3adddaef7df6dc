//! A local SMTP server for the tests: it accepts every message sent to it on loopback and keeps
//! it, so that a test can check what Braid emailed. Lines and messages are bounded.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// Longest command line or message line read.
const MAX_LINE: usize = 64 * 1024;
/// Largest message kept.
const MAX_MESSAGE: usize = 1 << 20;

#[derive(Debug, Clone)]
pub(crate) struct Mail {
    pub(crate) from: String,
    pub(crate) to: Vec<String>,
    /// The message as sent (headers and body), lines joined with `\n`.
    pub(crate) data: String,
}

pub(crate) struct SmtpSink {
    pub(crate) port: u16,
    messages: Arc<Mutex<Vec<Mail>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpSink {
    pub(crate) async fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let messages: Arc<Mutex<Vec<Mail>>> = Arc::default();
        let kept = messages.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, kept).await;
                });
            }
        });
        SmtpSink { port, messages, task }
    }

    pub(crate) fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub(crate) fn messages(&self) -> Vec<Mail> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits (up to `timeout`) until at least `count` messages arrived; returns them all.
    pub(crate) async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Mail> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= count {
                return messages;
            }
            assert!(Instant::now() < deadline, "{} of {count} emails arrived in {timeout:?}", messages.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn serve(stream: tokio::net::TcpStream, kept: Arc<Mutex<Vec<Mail>>>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink.test ESMTP\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::new());
    loop {
        let Some(line) = read_line(&mut lines).await? else { return Ok(()) };
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
        } else if upper.starts_with("HELO") {
            b"250 sink.test\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = address(&line["MAIL FROM:".len()..]);
            to.clear();
            b"250 OK\r\n"
        } else if upper.starts_with("RCPT TO:") {
            to.push(address(&line["RCPT TO:".len()..]));
            b"250 OK\r\n"
        } else if upper == "DATA" {
            write.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
            let mut data = String::new();
            loop {
                let Some(line) = read_line(&mut lines).await? else { return Ok(()) };
                if line == "." {
                    break;
                }
                if data.len() + line.len() < MAX_MESSAGE {
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                    data.push('\n');
                }
            }
            kept.lock().unwrap().push(Mail { from: from.clone(), to: std::mem::take(&mut to), data });
            b"250 OK: kept\r\n"
        } else if upper == "QUIT" {
            write.write_all(b"221 Bye\r\n").await?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            b"250 OK\r\n"
        } else {
            b"502 Command not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
}

/// One line without its CRLF; `None` at the end of the stream. A line over [`MAX_LINE`] ends
/// the connection.
async fn read_line(lines: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> std::io::Result<Option<String>> {
    let mut buffer = Vec::new();
    let read = (&mut *lines).take(MAX_LINE as u64).read_until(b'\n', &mut buffer).await?;
    if read == 0 || !buffer.ends_with(b"\n") {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&buffer).trim_end_matches(['\r', '\n']).to_owned()))
}

fn address(text: &str) -> String {
    text.trim().trim_start_matches('<').split('>').next().unwrap_or("").to_owned()
}
