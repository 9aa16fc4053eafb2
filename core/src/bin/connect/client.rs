//! The client commands: HTTP requests to an agent (ours or Consul's), printed as Consul's
//! CLI prints them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use connect_core::http::client::ApiClient;
use connect_core::{Error, ErrorKind};
use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::{HttpArgs, agent_config};
use crate::{CaCommand, IntentionCommand};

/// One client command.
#[derive(Debug)]
pub(crate) enum ClientCommand {
    Intention(IntentionCommand),
    Ca(CaCommand),
    Leaf { http: HttpArgs, service: String },
}

/// What a command prints and how it exits.
#[derive(Debug, Default)]
struct Outcome {
    stdout: String,
    code: u8,
}

impl Outcome {
    fn print(text: impl Into<String>) -> Outcome {
        Outcome {
            stdout: text.into(),
            code: 0,
        }
    }
}

/// Runs a client command; returns the exit code. Errors print `Error: …` on stderr, exit 1.
pub(crate) fn run(cmd: ClientCommand) -> u8 {
    crate::cli::with_runtime(crate::cli::Runtime::CurrentThread, |rt| {
        match rt.block_on(execute(cmd)) {
            Ok(out) => {
                print!("{}", out.stdout);
                if !out.stdout.is_empty() && !out.stdout.ends_with('\n') {
                    println!();
                }
                out.code
            }
            Err(e) => {
                eprintln!("Error: {e}");
                1
            }
        }
    })
}

fn client(http: &HttpArgs) -> Result<ApiClient, Error> {
    let config = agent_config(http)?.client_config().ok_or_else(|| {
        Error::new(
            ErrorKind::Internal,
            "the environment describes no HTTP agent",
        )
    })?;
    ApiClient::new(&config)
}

async fn execute(cmd: ClientCommand) -> Result<Outcome, Error> {
    match cmd {
        ClientCommand::Intention(c) => intention(c).await,
        ClientCommand::Ca(c) => ca(c).await,
        ClientCommand::Leaf { http, service } => leaf(&http, &service).await,
    }
}

fn pretty(value: &Value) -> Result<String, Error> {
    serde_json::to_string_pretty(value).map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))
}

fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// `ns/name` when the namespace is not the default, as Consul's CLI prints names.
fn service_string(ixn: &Value, side: &str) -> String {
    let name = text(ixn, &format!("{side}Name"));
    let ns = text(ixn, &format!("{side}NS"));
    let partition = text(ixn, &format!("{side}Partition"));
    let mut out = String::new();
    if !partition.is_empty() && partition != "default" {
        out.push_str(&partition);
        out.push('/');
    }
    if !ns.is_empty() && (ns != "default" || !out.is_empty()) {
        out.push_str(&ns);
        out.push('/');
    }
    out.push_str(&name);
    out
}

/// The action, or `L7` for intentions with permissions (which have no action of their own).
fn action_string(ixn: &Value) -> String {
    let action = text(ixn, "Action");
    if action.is_empty() && ixn.get("Permissions").is_some_and(|p| !p.is_null()) {
        "L7".into()
    } else {
        action
    }
}

/// `SRC => DST (action)`, Consul's `Intention.String()`.
fn intention_line(ixn: &Value) -> String {
    format!(
        "{} => {} ({})",
        service_string(ixn, "Source"),
        service_string(ixn, "Destination"),
        action_string(ixn)
    )
}

fn exact_query(src: &str, dst: &str) -> Vec<(&'static str, String)> {
    vec![("source", src.to_owned()), ("destination", dst.to_owned())]
}

/// The intention for SRC DST, or `None` when there is none.
async fn get_exact(c: &ApiClient, src: &str, dst: &str) -> Result<Option<Value>, Error> {
    match c
        .get::<Value>("/v1/connect/intentions/exact", &exact_query(src, dst))
        .await
    {
        Ok(v) => Ok(Some(v.value)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Columns aligned as Consul's `columnize` aligns them.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn parse_meta(meta: &[String]) -> Result<BTreeMap<String, String>, Error> {
    meta.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidParameter,
                        format!("-meta must be key=value, got {kv:?}"),
                    )
                })
        })
        .collect()
}

async fn intention(cmd: IntentionCommand) -> Result<Outcome, Error> {
    match cmd {
        IntentionCommand::Create {
            http,
            allow: _,
            deny,
            replace,
            meta,
            src,
            dst,
        } => {
            let c = client(&http)?;
            let action = if deny { "deny" } else { "allow" };
            let meta = parse_meta(&meta)?;
            if !replace && let Some(existing) = get_exact(&c, &src, &dst).await? {
                return Err(Error::new(
                    ErrorKind::InvalidParameter,
                    format!(
                        "an intention already exists: {} (use -replace to replace it)",
                        intention_line(&existing)
                    ),
                ));
            }
            let mut body = json!({
                "SourceName": src,
                "DestinationName": dst,
                "SourceType": "consul",
                "Action": action,
            });
            if !meta.is_empty() {
                body["Meta"] = json!(meta);
            }
            let _: Value = c
                .call(
                    Method::PUT,
                    "/v1/connect/intentions/exact",
                    &exact_query(&src, &dst),
                    Some(&body),
                )
                .await?;
            Ok(Outcome::print(format!(
                "Created: {}",
                intention_line(&body)
            )))
        }
        IntentionCommand::Check { http, src, dst } => {
            let c = client(&http)?;
            let v = c
                .get::<Value>("/v1/connect/intentions/check", &exact_query(&src, &dst))
                .await?
                .value;
            match v.get("Allowed").and_then(Value::as_bool) {
                Some(true) => Ok(Outcome::print("Allowed")),
                Some(false) => Ok(Outcome {
                    stdout: "Denied".into(),
                    code: 2,
                }),
                None => Err(Error::new(
                    ErrorKind::Http,
                    format!("unexpected answer from the agent: {v}"),
                )),
            }
        }
        IntentionCommand::Match {
            http,
            source,
            destination,
            name,
        } => {
            let by = match (source, destination) {
                (true, false) => "source",
                (false, true) => "destination",
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidParameter,
                        "exactly one of -source or -destination is required",
                    ));
                }
            };
            let c = client(&http)?;
            let v = c
                .get::<Value>(
                    "/v1/connect/intentions/match",
                    &[("by", by.to_owned()), ("name", name.clone())],
                )
                .await?
                .value;
            let list = v
                .get(&name)
                .or_else(|| v.as_object().and_then(|m| m.values().next()))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut out = String::new();
            for ixn in &list {
                out.push_str(&intention_line(ixn));
                out.push('\n');
            }
            Ok(Outcome::print(out))
        }
        IntentionCommand::Get { http, args } => {
            let c = client(&http)?;
            let ixn = match args.as_slice() {
                [id] => {
                    c.get::<Value>(&format!("/v1/connect/intentions/{}", path_segment(id)), &[])
                        .await?
                        .value
                }
                [src, dst] => get_exact(&c, src, dst)
                    .await?
                    .ok_or_else(|| Error::new(ErrorKind::NotFound, "Intention not found"))?,
                _ => return Err(usage("intention get takes SRC DST or an ID")),
            };
            let mut rows = vec![
                vec!["Source:".into(), service_string(&ixn, "Source")],
                vec!["Destination:".into(), service_string(&ixn, "Destination")],
                vec!["Action:".into(), action_string(&ixn)],
                vec!["ID:".into(), text(&ixn, "ID")],
                vec!["Precedence:".into(), text(&ixn, "Precedence")],
                vec!["Description:".into(), text(&ixn, "Description")],
                vec!["Created At:".into(), text(&ixn, "CreatedAt")],
            ];
            if let Some(meta) = ixn.get("Meta").and_then(Value::as_object) {
                for (k, v) in meta {
                    rows.push(vec![
                        format!("Meta[{k}]:"),
                        v.as_str().unwrap_or_default().to_owned(),
                    ]);
                }
            }
            Ok(Outcome::print(table(&rows)))
        }
        IntentionCommand::Delete { http, args } => {
            let c = client(&http)?;
            match args.as_slice() {
                [id] => {
                    let _: Value = c
                        .call::<Value, Value>(
                            Method::DELETE,
                            &format!("/v1/connect/intentions/{}", path_segment(id)),
                            &[],
                            None,
                        )
                        .await?;
                }
                [src, dst] => {
                    // Consul's DELETE exact succeeds when nothing matches; the CLI reports it.
                    if get_exact(&c, src, dst).await?.is_none() {
                        return Err(Error::new(ErrorKind::NotFound, "Intention not found"));
                    }
                    let _: Value = c
                        .call::<Value, Value>(
                            Method::DELETE,
                            "/v1/connect/intentions/exact",
                            &exact_query(src, dst),
                            None,
                        )
                        .await?;
                }
                _ => return Err(usage("intention delete takes SRC DST or an ID")),
            }
            Ok(Outcome::print("Intention deleted."))
        }
        IntentionCommand::List { http } => {
            let c = client(&http)?;
            let v = c.get::<Value>("/v1/connect/intentions", &[]).await?.value;
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                return Ok(Outcome::print("There are no intentions."));
            }
            let mut rows = vec![vec![
                "ID".into(),
                "Source".into(),
                "Action".into(),
                "Destination".into(),
                "Precedence".into(),
            ]];
            for ixn in &list {
                rows.push(vec![
                    text(ixn, "ID"),
                    service_string(ixn, "Source"),
                    action_string(ixn),
                    service_string(ixn, "Destination"),
                    text(ixn, "Precedence"),
                ]);
            }
            Ok(Outcome::print(table(&rows)))
        }
    }
}

fn usage(msg: &str) -> Error {
    Error::new(ErrorKind::InvalidParameter, msg)
}

/// An ID as one path segment (IDs are UUIDs; anything else is escaped, never a new path).
fn path_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn ca(cmd: CaCommand) -> Result<Outcome, Error> {
    match cmd {
        CaCommand::GetConfig { http } => {
            let c = client(&http)?;
            let v = c
                .get::<Value>("/v1/connect/ca/configuration", &[])
                .await?
                .value;
            Ok(Outcome::print(pretty(&v)?))
        }
        CaCommand::SetConfig { http, config_file } => {
            let raw = std::fs::read(&config_file).map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("reading {}: {e}", config_file.display()),
                )
            })?;
            let body: Value = serde_json::from_slice(&raw).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidParameter,
                    format!("{}: invalid JSON: {e}", config_file.display()),
                )
            })?;
            let c = client(&http)?;
            let _: Value = c
                .call(
                    Method::PUT,
                    "/v1/connect/ca/configuration",
                    &[],
                    Some(&body),
                )
                .await?;
            Ok(Outcome::print("Configuration updated!"))
        }
        CaCommand::Roots { http, pem } => {
            let c = client(&http)?;
            if pem {
                let raw = c
                    .get_raw("/v1/connect/ca/roots", &[("pem", "true".into())])
                    .await?;
                return Ok(Outcome::print(String::from_utf8_lossy(&raw).into_owned()));
            }
            let v = c.get::<Value>("/v1/connect/ca/roots", &[]).await?.value;
            Ok(Outcome::print(pretty(&v)?))
        }
    }
}

async fn leaf(http: &HttpArgs, service: &str) -> Result<Outcome, Error> {
    let c = client(http)?;
    let v = c
        .get::<Value>(
            &format!("/v1/agent/connect/ca/leaf/{}", path_segment(service)),
            &[],
        )
        .await?
        .value;
    let cert = text(&v, "CertPEM");
    let key = text(&v, "PrivateKeyPEM");
    if cert.is_empty() || key.is_empty() {
        return Err(Error::new(
            ErrorKind::Http,
            "the agent returned no certificate or no key",
        ));
    }
    let mut out = cert;
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&key);
    Ok(Outcome::print(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intention_lines_are_consuls() {
        let ixn = json!({"SourceName": "web", "SourceNS": "default", "DestinationName": "db",
                         "DestinationNS": "default", "Action": "allow"});
        assert_eq!(intention_line(&ixn), "web => db (allow)");
        let ns = json!({"SourceName": "web", "SourceNS": "team", "DestinationName": "*",
                        "Permissions": [{}]});
        assert_eq!(intention_line(&ns), "team/web => * (L7)");
    }

    #[test]
    fn tables_align() {
        let t = table(&[
            vec!["ID".into(), "Source".into()],
            vec!["1234".into(), "web".into()],
        ]);
        assert_eq!(t, "ID    Source\n1234  web\n");
    }

    #[test]
    fn meta_must_be_key_value() {
        assert_eq!(parse_meta(&["a=b=c".into()]).unwrap()["a"], "b=c");
        assert!(parse_meta(&["ab".into()]).is_err());
    }
}
