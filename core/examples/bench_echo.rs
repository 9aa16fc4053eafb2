//! bench_echo: the Rust side of the C-vs-Rust binding benchmark (`make bench-ffi`). Both
//! modes take their identity from the agent named by `CONSUL_HTTP_ADDR`, so that the C client
//! (`ffi/bench/bench_client.c`) and this one dial the same Rust server with one CA.
//!
//! ```text
//! bench_echo serve NAME                 echo server; prints "listening on ADDR"; until killed
//! bench_echo client NAME TARGET ADDR N MIB
//!                                       N sequential dial + 1-byte echo handshakes, then MIB
//!                                       MiB echoed in 64 KiB lock-step on one connection;
//!                                       prints "rust handshakes/s ... MiB/s ..."
//! ```
//!
//! `cargo build --release -p connect-core --example bench_echo`

use std::process::ExitCode;
use std::time::{Duration, Instant};

use connect_core::agent::{Agent, AgentConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHUNK: usize = 64 * 1024;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", name] => serve(name).await,
        ["client", name, target, addr, n, mib] => match (n.parse(), mib.parse()) {
            (Ok(n), Ok(mib)) => client(name, target, addr, n, mib).await,
            _ => Err("N and MIB are numbers".to_owned()),
        },
        _ => {
            eprintln!("usage: bench_echo serve NAME | client NAME TARGET ADDR N MIB");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_echo: {e}");
            ExitCode::from(1)
        }
    }
}

async fn service(name: &str) -> Result<(Agent, connect_core::agent::ConnectService), String> {
    let agent = Agent::new_async(AgentConfig::from_env())
        .await
        .map_err(|e| format!("agent: {e}"))?;
    let svc = agent.service(name).map_err(|e| format!("service: {e}"))?;
    svc.ready_wait(Duration::from_secs(30))
        .await
        .map_err(|e| format!("ready: {e}"))?;
    Ok((agent, svc))
}

async fn serve(name: &str) -> Result<(), String> {
    let (_agent, svc) = service(name).await?;
    let mut listener = svc
        .tls()
        .listen("127.0.0.1:0")
        .await
        .map_err(|e| format!("listen: {e}"))?;
    println!("listening on {}", listener.local_addr());
    loop {
        let mut conn = listener
            .accept()
            .await
            .map_err(|e| format!("accept: {e}"))?;
        tokio::spawn(async move {
            let mut buf = vec![0_u8; CHUNK];
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if conn.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

async fn client(name: &str, target: &str, addr: &str, n: u32, mib: usize) -> Result<(), String> {
    let (_agent, svc) = service(name).await?;
    let start = Instant::now();
    for _ in 0..n {
        let mut conn = svc
            .dial_addr(addr, target)
            .await
            .map_err(|e| format!("dial: {e}"))?;
        let mut b = [7_u8; 1];
        conn.write_all(&b).await.map_err(|e| e.to_string())?;
        conn.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        conn.shutdown().await.ok();
    }
    let hs = f64::from(n) / start.elapsed().as_secs_f64();

    let mut conn = svc
        .dial_addr(addr, target)
        .await
        .map_err(|e| format!("dial: {e}"))?;
    let out = vec![0x5a_u8; CHUNK];
    let mut back = vec![0_u8; CHUNK];
    let total = mib * 1024 * 1024;
    let start = Instant::now();
    let mut done = 0;
    while done < total {
        conn.write_all(&out).await.map_err(|e| e.to_string())?;
        conn.read_exact(&mut back)
            .await
            .map_err(|e| e.to_string())?;
        done += CHUNK;
    }
    #[allow(clippy::cast_precision_loss, reason = "a rate")]
    let mib_s = done as f64 / start.elapsed().as_secs_f64() / f64::from(1 << 20);
    println!("rust handshakes/s {hs:.0} MiB/s {mib_s:.0}");
    Ok(())
}
