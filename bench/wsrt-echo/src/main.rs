//! wsrt with a native Rust handler: `--mode echo` sends each message back; `--mode pubsub`
//! subscribes every connection to topic "t" on open and publishes every message it receives
//! to "t" (encoded once, shared across connections). One worker unless `--workers N`.
use wsrt::{Conn, Handler, Message, Options, Server};

struct Echo;
impl Handler for Echo {
    fn on_message(&self, c: &mut Conn<'_>, m: Message<'_>) {
        c.send(m);
    }
}

struct PubSub;
impl Handler for PubSub {
    fn on_open(&self, c: &mut Conn<'_>) {
        c.subscribe("t");
    }
    fn on_message(&self, c: &mut Conn<'_>, m: Message<'_>) {
        c.server().publish("t", m);
    }
}

fn main() {
    let mut opts = Options::default();
    opts.set("listen", "127.0.0.1:9001").unwrap();
    opts.set("workers", "1").unwrap();
    let mut pubsub = false;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--mode" => pubsub = v == "pubsub",
            "--listen" => opts.set("listen", &v).unwrap(),
            "--workers" => opts.set("workers", &v).unwrap(),
            "--set" => {
                let (name, value) = v.split_once('=').unwrap_or((&v, ""));
                if let Err(e) = opts.set(name, value) {
                    eprintln!("wsrt-echo: {e}");
                    std::process::exit(2);
                }
            }
            _ => {
                eprintln!(
                    "usage: wsrt-echo [--listen IP:PORT] [--workers N] [--mode echo|pubsub] [--set NAME=VALUE]..."
                );
                std::process::exit(2);
            }
        }
    }
    let server = if pubsub {
        Server::start(opts, PubSub)
    } else {
        Server::start(opts, Echo)
    }
    .expect("start");
    server.join();
}
