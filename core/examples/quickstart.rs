//! The README's Rust quick start, compiled and run by the test command so it stays true:
//! an in-process `-dev` agent, `db` listening with mutual TLS, and `web` dialing it by name.
//!
//! `cargo run -p connect-core --example quickstart`

use std::time::Duration;

use connect_core::agent::{Agent, AgentConfig};
use connect_core::intentions::IntentionAction;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let agent = Agent::new_async(AgentConfig::dev()).await?; // or AgentConfig::from_env()
    agent
        .intention_upsert("web", "db", IntentionAction::Allow)
        .await?;
    let db = agent.service("db")?;
    let web = agent.service("web")?;
    db.ready_wait(Duration::from_secs(10)).await?;
    web.ready_wait(Duration::from_secs(10)).await?;
    let mut listener = db.listen("127.0.0.1:0").await?; // registers db in the catalog
    tokio::spawn(async move {
        while let Ok(mut conn) = listener.accept().await {
            // Only peers the intentions allow get here; conn.peer_id() says who.
            let mut buf = [0u8; 5];
            if conn.read_exact(&mut buf).await.is_ok() {
                let _ = conn.write_all(&buf).await;
            }
        }
    });
    let mut conn = web.dial("db").await?; // mutual TLS to a verified, healthy db instance
    conn.write_all(b"hello").await?;
    let mut answer = [0u8; 5];
    conn.read_exact(&mut answer).await?;
    println!(
        "{} answered {:?}",
        conn.peer_id(),
        String::from_utf8_lossy(&answer)
    );
    agent.close();
    Ok(())
}
