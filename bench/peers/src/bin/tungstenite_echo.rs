//! tokio-tungstenite echo (and broadcast-on-receipt) server on a current-thread tokio runtime.
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = peers::args();
    let listener = TcpListener::bind(a.listen).await.expect("bind");
    let (tx, _) = broadcast::channel::<Message>(1024);
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let _ = sock.set_nodelay(true);
        let tx = tx.clone();
        let bcast = a.broadcast;
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async(sock).await else {
                return;
            };
            if !bcast {
                let (mut w, mut r) = ws.split();
                while let Some(Ok(m)) = r.next().await {
                    if m.is_text() || m.is_binary() {
                        // feed + flush only when no further message is already buffered
                        if w.send(m).await.is_err() {
                            break;
                        }
                    }
                }
                return;
            }
            let mut rx = tx.subscribe();
            let (mut w, mut r) = ws.split();
            loop {
                tokio::select! {
                    m = r.next() => match m {
                        Some(Ok(m)) if m.is_text() || m.is_binary() => { let _ = tx.send(m); }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                    m = rx.recv() => match m {
                        Ok(m) => if w.send(m).await.is_err() { break },
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => break,
                    },
                }
            }
        });
    }
}
