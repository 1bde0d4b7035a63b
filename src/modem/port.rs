//! A serial port as the driver reads and writes it: `serial2` opens it and sets the line up
//! (raw mode, speed), tokio's reactor watches it.
//!
//! Not `serial2-tokio`'s port, which does the same with one difference that costs: its reads
//! leave the port marked readable until a read finds nothing, so every answer of the modem
//! took a second `read(2)` that failed with `EAGAIN`: two per SMS sent, about one in seven of
//! the gateway's system calls in `bench/modems`' drain. A read that fills less than the
//! buffer has taken everything the terminal held, and here it clears the readiness, as
//! tokio's own sockets do. Nothing is missed by that: the reactor clears only the readiness it
//! reported before the read, and bytes that arrive after it wake the reactor again
//! (edge-triggered epoll).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(super) struct Port {
    fd: AsyncFd<File>,
}

impl Port {
    /// Opens `path` at `baud`, raises DTR and RTS, and drops whatever the port held: what the
    /// modem said while no one listened belongs to someone else's commands.
    pub(super) fn open(path: &Path, baud: u32) -> std::io::Result<Port> {
        let port = serial2::SerialPort::open(path, baud)?;
        // Modem-control lines do not exist on a pseudo-terminal (ENOTTY); on hardware DTR up
        // tells the modem a terminal is there. Either way it is not worth failing over.
        let _ = port.set_dtr(true);
        let _ = port.set_rts(true);
        let _ = port.discard_buffers();
        // `serial2` opens the port non-blocking (O_NONBLOCK), as the reactor needs.
        let file = File::from(OwnedFd::from(port));
        // SAFETY: the `File` owns its descriptor and is owned by the `AsyncFd` until it is
        // dropped, so the registered descriptor can neither be closed nor reused behind
        // tokio's back.
        let fd = unsafe { AsyncFd::register(file) }?;
        Ok(Port { fd })
    }
}

impl AsyncRead for Port {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let room = unfilled.len();
            match guard.try_io(|f| f.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    if n > 0 && n < room {
                        guard.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Not readable after all: the readiness is cleared, wait for the next.
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Port {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|f| f.get_ref().write(buf)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Writes go straight to the terminal: there is no buffer of ours to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A pseudo-terminal pair in raw mode: the driver's end opened by path as a modem's would
    /// be, and the other end as the modem.
    fn pair() -> (Port, File, tempfile::TempDir) {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let dir = tempfile::tempdir().expect("temp dir");
        let link = dir.path().join("modem");
        let name = nix::unistd::ttyname(&pty.slave).expect("ttyname");
        std::os::unix::fs::symlink(name, &link).expect("symlink");
        let port = Port::open(&link, 115_200).expect("open the port");
        (port, File::from(pty.master), dir)
    }

    /// Reads from `port` into `buf` until `got` holds `len` bytes, each read failing the test
    /// with `missed` if nothing comes within 5 s.
    async fn read_total(port: &mut Port, buf: &mut [u8], len: usize, missed: &str) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < len {
            let n = tokio::time::timeout(Duration::from_secs(5), port.read(buf))
                .await
                .expect(missed)
                .unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// A short read clears the readiness, and what the modem says after it still wakes the
    /// reader: the next answer is read, not lost.
    #[tokio::test]
    async fn bytes_after_a_short_read_are_not_missed() {
        let (mut port, mut modem, _dir) = pair();
        let mut buf = [0u8; 64];
        modem.write_all(b"\r\n> ").unwrap();
        let n = port.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"\r\n> ");
        // Nothing more yet: the read waits instead of spinning or failing.
        let waiting = tokio::time::timeout(Duration::from_millis(50), port.read(&mut buf)).await;
        assert!(waiting.is_err(), "read returned with nothing to read");
        let answer = b"\r\n+CMGS: 7\r\n\r\nOK\r\n";
        modem.write_all(answer).unwrap();
        let got = read_total(
            &mut port,
            &mut buf,
            answer.len(),
            "the answer after a short read was missed",
        )
        .await;
        assert_eq!(got, answer);
        // And what the driver writes reaches the modem.
        port.write_all(b"AT\r").await.unwrap();
        let mut cmd = [0u8; 3];
        modem.read_exact(&mut cmd).unwrap();
        assert_eq!(&cmd, b"AT\r");
    }

    /// A read that fills the buffer leaves the port readable: the rest follows at once.
    #[tokio::test]
    async fn a_full_read_leaves_the_rest_to_read() {
        let (mut port, mut modem, _dir) = pair();
        modem.write_all(b"0123456789").unwrap();
        // Let the terminal take all ten bytes before the first read.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut small = [0u8; 4];
        let got = read_total(
            &mut port,
            &mut small,
            10,
            "the rest of the bytes was missed",
        )
        .await;
        assert_eq!(got, b"0123456789");
    }
}
