//! A server in this process as the agent's backend, behind a trait object.
//!
//! Why a trait object: [`Backend`](super::Backend)'s methods are linked into every executable
//! that uses an [`Agent`](super::Agent). Calling the server's methods directly from them would
//! link the whole server — state store, SQLite, the CA's signing, the ACL system — into
//! executables that only ever talk to an agent over HTTP: `connect-proxy`, one process per
//! service instance, kept about 1.3 MB more of it resident each (BENCHMARKS.md, "Sidecar
//! proxies"). Behind the vtable that code is linked only where an in-process backend is made,
//! [`InProcess::new`], which the HTTP-only [`Agent::new_http_async`](super::Agent::new_http_async)
//! never reaches.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::Signed;
use super::backend::no_path_to_datacenter;
use crate::ca::{CaConfiguration, IndexedCaRoots, SignPolicy};
use crate::catalog::{ServiceEntry, ServiceRegistration};
use crate::intentions::{Intention, IntentionAction, MatchType};
use crate::server::{JwtSvid, JwtValidation, Server};
use crate::state::{Indexed, Table};
use crate::{Error, ErrorKind};

type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// A server in this process as the agent's backend: every call is a function call.
#[derive(Clone)]
pub struct InProcess(Arc<dyn Local>);

impl InProcess {
    /// `server` as an agent's backend.
    pub fn new(server: Server) -> InProcess {
        InProcess(Arc::new(server))
    }

    /// The server.
    pub fn server(&self) -> &Server {
        self.0.server()
    }

    pub(super) fn local(&self) -> &dyn Local {
        &*self.0
    }
}

impl fmt::Debug for InProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0.server(), f)
    }
}

/// What [`Backend`](super::Backend) asks of a server in this process; each method is the
/// in-process side of the `Backend` method of the same name.
pub(super) trait Local: Send + Sync {
    fn server(&self) -> &Server;
    fn roots(&self, min_index: u64, wait: Duration) -> Fut<'_, Indexed<IndexedCaRoots>>;
    fn sign<'a>(&'a self, token: Option<&'a str>, csr_pem: &'a str) -> Fut<'a, Signed>;
    fn jwt_svid<'a>(
        &'a self,
        token: Option<&'a str>,
        service: &'a str,
        audiences: &'a [String],
    ) -> Fut<'a, JwtSvid>;
    fn validate_jwt_svid(&self, jwt: &str, audience: &str) -> Result<JwtValidation, Error>;
    fn sign_agent<'a>(&'a self, csr_pem: &'a str) -> Fut<'a, Signed>;
    fn intention_match<'a>(
        &'a self,
        token: Option<&'a str>,
        service: &'a str,
        min_index: u64,
        wait: Duration,
    ) -> Fut<'a, Indexed<Vec<Intention>>>;
    fn health<'a>(
        &'a self,
        token: Option<&'a str>,
        service: &'a str,
        connect: bool,
        datacenter: Option<&'a str>,
        min_index: u64,
        wait: Duration,
    ) -> Fut<'a, Indexed<Vec<ServiceEntry>>>;
    fn intention_upsert<'a>(
        &'a self,
        token: Option<&'a str>,
        source: &'a str,
        destination: &'a str,
        action: IntentionAction,
    ) -> Fut<'a, ()>;
    /// Whether there was one to delete.
    fn intention_delete<'a>(
        &'a self,
        token: Option<&'a str>,
        source: &'a str,
        destination: &'a str,
    ) -> Fut<'a, bool>;
    fn intention_check(
        &self,
        token: Option<&str>,
        source: &str,
        destination: &str,
    ) -> Result<bool, Error>;
    fn ca_set_config<'a>(&'a self, token: Option<&'a str>, config: CaConfiguration) -> Fut<'a, ()>;
    fn register_service<'a>(
        &'a self,
        token: Option<&'a str>,
        registration: ServiceRegistration,
    ) -> Fut<'a, ()>;
    fn deregister_service<'a>(&'a self, token: Option<&'a str>, service_id: &'a str)
    -> Fut<'a, ()>;
}

async fn in_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?
}

/// Runs `f` with a clone of `server` and `token` on the blocking pool: the server's writes
/// and signing take its store's lock and may write to disk.
fn blocking<T: Send + 'static>(
    server: &Server,
    token: Option<&str>,
    f: impl FnOnce(&Server, Option<&str>) -> Result<T, Error> + Send + 'static,
) -> impl Future<Output = Result<T, Error>> + Send + 'static {
    let (s, t) = (server.clone(), token.map(str::to_owned));
    in_blocking(move || f(&s, t.as_deref()))
}

impl Local for Server {
    fn server(&self) -> &Server {
        self
    }

    fn roots(&self, min_index: u64, wait: Duration) -> Fut<'_, Indexed<IndexedCaRoots>> {
        Box::pin(async move {
            self.wait(&[Table::CaRoots], min_index, wait).await;
            Ok(self.ca_roots())
        })
    }

    fn sign<'a>(&'a self, token: Option<&'a str>, csr_pem: &'a str) -> Fut<'a, Signed> {
        let csr = csr_pem.to_owned();
        let signing = blocking(self, token, move |s, t| {
            s.sign(t, &csr, SignPolicy::ServiceOnly)
        });
        Box::pin(async move {
            Ok(Signed {
                issued: signing.await?,
                peer_key_pem: None,
            })
        })
    }

    fn jwt_svid<'a>(
        &'a self,
        token: Option<&'a str>,
        service: &'a str,
        audiences: &'a [String],
    ) -> Fut<'a, JwtSvid> {
        let (service, audiences) = (service.to_owned(), audiences.to_vec());
        Box::pin(blocking(self, token, move |s, t| {
            s.jwt_svid(t, &service, &audiences)
        }))
    }

    fn validate_jwt_svid(&self, jwt: &str, audience: &str) -> Result<JwtValidation, Error> {
        Ok(Server::validate_jwt_svid(self, jwt, audience)?.into())
    }

    fn sign_agent<'a>(&'a self, csr_pem: &'a str) -> Fut<'a, Signed> {
        let csr = csr_pem.to_owned();
        let signing = blocking(self, None, move |s, _| {
            s.sign_local(&csr, SignPolicy::Local)
        });
        Box::pin(async move {
            Ok(Signed {
                issued: signing.await?,
                peer_key_pem: None,
            })
        })
    }

    fn intention_match<'a>(
        &'a self,
        token: Option<&'a str>,
        service: &'a str,
        min_index: u64,
        wait: Duration,
    ) -> Fut<'a, Indexed<Vec<Intention>>> {
        Box::pin(async move {
            self.wait(&[Table::Intentions], min_index, wait).await;
            let m = Server::intention_match(self, token, MatchType::Destination, &[service])?;
            let list = m.value.into_values().next().unwrap_or_default();
            Ok(Indexed {
                value: list,
                index: m.index,
            })
        })
    }

    fn health<'a>(
        &'a self,
        token: Option<&'a str>,
        service: &'a str,
        connect: bool,
        datacenter: Option<&'a str>,
        min_index: u64,
        wait: Duration,
    ) -> Fut<'a, Indexed<Vec<ServiceEntry>>> {
        Box::pin(async move {
            // A server in this process is one datacenter and forwards nowhere.
            if let Some(dc) = datacenter
                && dc != self.datacenter()
            {
                return Err(no_path_to_datacenter(dc));
            }
            self.wait(Table::CATALOG, min_index, wait).await;
            let q = crate::server::ServiceQuery {
                connect,
                passing_only: true,
                ..Default::default()
            };
            let r = Server::health(self, token, service, &q)?;
            Ok(Indexed {
                value: r.value.value,
                index: r.index,
            })
        })
    }

    fn intention_upsert<'a>(
        &'a self,
        token: Option<&'a str>,
        source: &'a str,
        destination: &'a str,
        action: IntentionAction,
    ) -> Fut<'a, ()> {
        let (src, dst) = (source.to_owned(), destination.to_owned());
        Box::pin(blocking(self, token, move |s, t| {
            let body = Intention {
                action: Some(action),
                ..Intention::default()
            };
            s.intention_upsert_exact(t, &src, &dst, body).map(|_| ())
        }))
    }

    fn intention_delete<'a>(
        &'a self,
        token: Option<&'a str>,
        source: &'a str,
        destination: &'a str,
    ) -> Fut<'a, bool> {
        let (src, dst) = (source.to_owned(), destination.to_owned());
        Box::pin(blocking(self, token, move |s, t| {
            s.intention_delete_exact(t, &src, &dst)
        }))
    }

    fn intention_check(
        &self,
        token: Option<&str>,
        source: &str,
        destination: &str,
    ) -> Result<bool, Error> {
        Server::intention_check(self, token, source, destination)
    }

    fn ca_set_config<'a>(&'a self, token: Option<&'a str>, config: CaConfiguration) -> Fut<'a, ()> {
        Box::pin(blocking(self, token, move |s, t| {
            s.set_ca_config(t, config).map(|_| ())
        }))
    }

    fn register_service<'a>(
        &'a self,
        token: Option<&'a str>,
        registration: ServiceRegistration,
    ) -> Fut<'a, ()> {
        Box::pin(blocking(self, token, move |s, t| {
            Server::register_service(s, t, registration).map(|_| ())
        }))
    }

    fn deregister_service<'a>(
        &'a self,
        token: Option<&'a str>,
        service_id: &'a str,
    ) -> Fut<'a, ()> {
        let id = service_id.to_owned();
        Box::pin(blocking(self, token, move |s, t| {
            Server::deregister_service(s, t, &id)
        }))
    }
}
