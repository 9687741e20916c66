//! fastwebsockets echo (and broadcast-on-receipt) server on a current-thread tokio runtime.
//! The upgrade is done by hand (peers::upgrade_response), then `WebSocket::after_handshake`.
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload, Role, WebSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

async fn upgrade(sock: &mut TcpStream) -> Option<()> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 1024];
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some((_, resp)) = peers::upgrade_response(&buf).ok()? {
            // loadgen (like browsers) waits for the 101 before sending frames
            sock.write_all(&resp).await.ok()?;
            return Some(());
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = peers::args();
    let listener = TcpListener::bind(a.listen).await.expect("bind");
    let (tx, _) = broadcast::channel::<(OpCode, Vec<u8>)>(1024);
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let _ = sock.set_nodelay(true);
        let tx = tx.clone();
        let bcast = a.broadcast;
        tokio::spawn(async move {
            if upgrade(&mut sock).await.is_none() {
                return;
            }
            let mut ws = WebSocket::after_handshake(sock, Role::Server);
            ws.set_auto_close(true);
            ws.set_auto_pong(true);
            if !bcast {
                let mut ws = FragmentCollector::new(ws);
                while let Ok(frame) = ws.read_frame().await {
                    let echo = matches!(frame.opcode, OpCode::Text | OpCode::Binary);
                    let close = matches!(frame.opcode, OpCode::Close);
                    if close || (echo && ws.write_frame(frame).await.is_err()) {
                        break;
                    }
                }
                return;
            }
            // Broadcast: split halves; this task reads and publishes, a writer task sends what
            // any connection published (reads are not cancelled mid-frame this way).
            let (mut r, w) = ws.split(tokio::io::split);
            let w = std::sync::Arc::new(tokio::sync::Mutex::new(w));
            let mut rx = tx.subscribe();
            let w2 = w.clone();
            let writer = tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok((op, data)) => {
                            let f = Frame::new(true, op, None, Payload::Owned(data));
                            if w2.lock().await.write_frame(f).await.is_err() {
                                break;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => break,
                    }
                }
            });
            let mut obligated = |f: Frame<'_>| {
                let (op, data) = (f.opcode, f.payload.to_vec());
                let w = w.clone();
                async move {
                    w.lock()
                        .await
                        .write_frame(Frame::new(true, op, None, Payload::Owned(data)))
                        .await
                }
            };
            loop {
                match r.read_frame(&mut obligated).await {
                    Ok(f) if matches!(f.opcode, OpCode::Text | OpCode::Binary) => {
                        let _ = tx.send((f.opcode, f.payload.to_vec()));
                    }
                    Ok(f) if f.opcode == OpCode::Close => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            writer.abort();
        });
    }
}
