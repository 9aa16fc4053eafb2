//! echo_client: the Rust twin of `examples/c/echo_client.c`, used by the cross-language
//! tests of the bindings. Sends one message to a Connect-native echo service over mutual TLS
//! and prints the answer.
//!
//! Its identity comes from the agent named by Consul's environment variables
//! (`CONSUL_HTTP_ADDR`, default 127.0.0.1:8500).
//!
//! ```text
//! echo_client [-service NAME] [-target NAME] ADDR MESSAGE
//!
//!   -service NAME   this client's service name (default web)
//!   -target NAME    the service expected at ADDR (default echo)
//!   ADDR            host:port to dial, or `-` to find `target` through the catalog
//! ```
//!
//! Exits 0 after printing the echo, 1 when the dial or the echo fails (a client denied by
//! the intentions sees the server abort the handshake), 2 on bad arguments.
//!
//! `cargo build -p connect-core --example echo_client`

use std::process::ExitCode;
use std::time::Duration;

use connect_core::agent::{Agent, AgentConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(10);

fn usage() -> ExitCode {
    eprintln!("usage: echo_client [-service NAME] [-target NAME] ADDR MESSAGE");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut name, mut target) = ("web".to_owned(), "echo".to_owned());
    let mut i = 0;
    while i + 1 < args.len() && args[i].starts_with('-') && args[i] != "-" {
        match args[i].as_str() {
            "-service" => name.clone_from(&args[i + 1]),
            "-target" => target.clone_from(&args[i + 1]),
            _ => return usage(),
        }
        i += 2;
    }
    let [addr, message] = &args[i..] else {
        return usage();
    };
    match run(&name, &target, addr, message).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_client: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(name: &str, target: &str, addr: &str, message: &str) -> Result<(), String> {
    let agent = Agent::new_async(AgentConfig::from_env())
        .await
        .map_err(|e| format!("starting the agent: {e}"))?;
    let service = agent.service(name).map_err(|e| format!("service: {e}"))?;
    service
        .ready_wait(Duration::from_secs(30))
        .await
        .map_err(|e| format!("waiting for a certificate: {e}"))?;
    let dial = async {
        if addr == "-" {
            service.dial(target).await
        } else {
            service.dial_addr(addr, target).await
        }
    };
    let mut conn = tokio::time::timeout(TIMEOUT, dial)
        .await
        .map_err(|_| "dial: timed out".to_owned())?
        .map_err(|e| format!("dial: {e}"))?;
    let peer = conn.peer_id().to_string();
    let echo = async {
        conn.write_all(message.as_bytes()).await?;
        conn.flush().await?;
        let mut got = vec![0_u8; message.len()];
        conn.read_exact(&mut got).await?;
        conn.shutdown().await.ok();
        Ok::<_, std::io::Error>(got)
    };
    let got = tokio::time::timeout(TIMEOUT, echo)
        .await
        .map_err(|_| "echo: timed out".to_owned())?
        .map_err(|e| format!("echo: {e}"))?;
    println!("{}", String::from_utf8_lossy(&got));
    println!("(from {peer})");
    service.close();
    agent.close();
    Ok(())
}
